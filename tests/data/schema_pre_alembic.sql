-- Schema of a database made by the last release before Alembic (main at e33b386: create_all + _add_missing_columns),
-- dumped from sqlite_master. tests/test_migrations.py upgrades a database built from it.
CREATE TABLE facilities (
	id VARCHAR(64) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	footprint JSON, 
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
	geo JSON, 
	coverage JSON, 
	exposure FLOAT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(facility_id) REFERENCES facilities (id) ON DELETE CASCADE
);
CREATE INDEX ix_observations_facility_time ON observations (facility_id, captured_at);
CREATE TABLE alert_thresholds (
	facility_id VARCHAR(64) NOT NULL, 
	score FLOAT, 
	drop_score FLOAT, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (facility_id), 
	FOREIGN KEY(facility_id) REFERENCES facilities (id) ON DELETE CASCADE
);
CREATE TABLE jobs (
	id VARCHAR(36) NOT NULL, 
	facility_id VARCHAR(64) NOT NULL, 
	captured_at DATETIME NOT NULL, 
	gsd_m FLOAT, 
	image_sha256 VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	progress FLOAT NOT NULL, 
	error VARCHAR(2000), 
	error_status INTEGER, 
	observation_id INTEGER, 
	timing_ms JSON, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(facility_id) REFERENCES facilities (id) ON DELETE CASCADE
);
CREATE INDEX ix_jobs_facility_id ON jobs (facility_id);
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
	drop_score FLOAT, 
	model VARCHAR(200), 
	count_sd FLOAT, 
	highest_in_days FLOAT, 
	lowest_in_days FLOAT, 
	expected_lo FLOAT, 
	expected_hi FLOAT, 
	PRIMARY KEY (observation_id, class_name), 
	FOREIGN KEY(observation_id) REFERENCES observations (id) ON DELETE CASCADE
);
CREATE INDEX ix_counts_class ON observation_counts (class_name, observation_id);
CREATE TABLE alert_deliveries (
	id INTEGER NOT NULL, 
	facility_id VARCHAR(64) NOT NULL, 
	observation_id INTEGER NOT NULL, 
	class_name VARCHAR(32) NOT NULL, 
	direction VARCHAR(8) NOT NULL, 
	payload JSON NOT NULL, 
	status VARCHAR(8) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME NOT NULL, 
	last_error VARCHAR(500), 
	created_at DATETIME NOT NULL, 
	sent_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_delivery_alert UNIQUE (observation_id, class_name, direction), 
	FOREIGN KEY(facility_id) REFERENCES facilities (id) ON DELETE CASCADE, 
	FOREIGN KEY(observation_id) REFERENCES observations (id) ON DELETE CASCADE
);
CREATE INDEX ix_deliveries_due ON alert_deliveries (status, next_attempt_at);
CREATE INDEX ix_alert_deliveries_facility_id ON alert_deliveries (facility_id);
CREATE TABLE detections (
	id INTEGER NOT NULL, 
	observation_id INTEGER NOT NULL, 
	class_name VARCHAR(32) NOT NULL, 
	confidence FLOAT NOT NULL, 
	obb JSON NOT NULL, 
	obb_lonlat JSON, 
	PRIMARY KEY (id), 
	FOREIGN KEY(observation_id) REFERENCES observations (id) ON DELETE CASCADE
);
CREATE INDEX ix_detections_observation_id ON detections (observation_id);
