-- Schema of a database made by the first release (d172d14: create_all, before anomaly v2, footprints and jobs),
-- dumped from sqlite_master. tests/test_migrations.py upgrades a database built from it.
CREATE TABLE facilities (
	id VARCHAR(64) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE observations (
	id INTEGER NOT NULL, 
	facility_id VARCHAR(64) NOT NULL, 
	captured_at DATETIME NOT NULL, 
	source VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	image_sha256 VARCHAR(64), 
	image_width INTEGER, 
	image_height INTEGER, 
	image_format VARCHAR(8), 
	gsd_m FLOAT, 
	model_name VARCHAR(100), 
	model_version VARCHAR(100), 
	PRIMARY KEY (id), 
	FOREIGN KEY(facility_id) REFERENCES facilities (id) ON DELETE CASCADE
);
CREATE INDEX ix_observations_facility_time ON observations (facility_id, captured_at);
CREATE TABLE observation_counts (
	observation_id INTEGER NOT NULL, 
	class_name VARCHAR(32) NOT NULL, 
	count INTEGER NOT NULL, 
	score FLOAT, 
	expected FLOAT, 
	history_size INTEGER NOT NULL, 
	history_max INTEGER, 
	exceeds_history_max BOOLEAN NOT NULL, 
	history_span_days FLOAT, 
	reason VARCHAR(200) NOT NULL, 
	PRIMARY KEY (observation_id, class_name), 
	FOREIGN KEY(observation_id) REFERENCES observations (id) ON DELETE CASCADE
);
CREATE INDEX ix_counts_class ON observation_counts (class_name, observation_id);
CREATE TABLE detections (
	id INTEGER NOT NULL, 
	observation_id INTEGER NOT NULL, 
	class_name VARCHAR(32) NOT NULL, 
	confidence FLOAT NOT NULL, 
	obb JSON NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(observation_id) REFERENCES observations (id) ON DELETE CASCADE
);
CREATE INDEX ix_detections_observation_id ON detections (observation_id);
