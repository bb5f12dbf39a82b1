-- The SQLite schema fleetcast 977f9a1 (schema_version 2) made: sqlite_master of a new database, dumped (issue 12).
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE clients (
	id INTEGER NOT NULL, 
	mac VARCHAR(17) NOT NULL, 
	hostname VARCHAR(255) NOT NULL, 
	inventory JSON NOT NULL, 
	credential_hash VARCHAR(64), 
	address VARCHAR(64) NOT NULL, 
	enrolled_at DATETIME NOT NULL, 
	last_seen DATETIME NOT NULL, 
	online BOOLEAN NOT NULL, 
	PRIMARY KEY (id)
);
CREATE UNIQUE INDEX ix_clients_mac ON clients (mac);
CREATE UNIQUE INDEX ix_clients_credential_hash ON clients (credential_hash);
CREATE TABLE deployments (
	id INTEGER NOT NULL, 
	image VARCHAR(255) NOT NULL, 
	image_size BIGINT NOT NULL, 
	disk_rule VARCHAR(255) NOT NULL, 
	batch INTEGER NOT NULL, 
	name_pattern VARCHAR(255), 
	ip_range VARCHAR(64), 
	gateway VARCHAR(64), 
	dns JSON NOT NULL, 
	grow BOOLEAN NOT NULL, 
	"then" VARCHAR(16) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	created_by VARCHAR(255) NOT NULL, 
	transport VARCHAR(16) NOT NULL, 
	image_id VARCHAR(64) NOT NULL, 
	multicast JSON NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE events (
	id INTEGER NOT NULL, 
	ts DATETIME NOT NULL, 
	type VARCHAR(32) NOT NULL, 
	deployment_id INTEGER, 
	client_id INTEGER, 
	mac VARCHAR(17), 
	data JSON NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_events_ts ON events (ts);
CREATE INDEX ix_events_type ON events (type);
CREATE INDEX ix_events_deployment_id ON events (deployment_id);
CREATE TABLE audit (
	id INTEGER NOT NULL, 
	ts DATETIME NOT NULL, 
	actor VARCHAR(64) NOT NULL, 
	address VARCHAR(64) NOT NULL, 
	action VARCHAR(64) NOT NULL, 
	target VARCHAR(255) NOT NULL, 
	detail JSON NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE targets (
	id INTEGER NOT NULL, 
	deployment_id INTEGER NOT NULL, 
	client_id INTEGER NOT NULL, 
	position INTEGER NOT NULL, 
	mac VARCHAR(17) NOT NULL, 
	name VARCHAR(255), 
	ip VARCHAR(64), 
	state VARCHAR(16) NOT NULL, 
	phase VARCHAR(32), 
	disk VARCHAR(255), 
	bytes_done BIGINT NOT NULL, 
	bytes_total BIGINT NOT NULL, 
	rate_bps FLOAT NOT NULL, 
	eta_seconds FLOAT, 
	checkpoint_chunk INTEGER NOT NULL, 
	attempt INTEGER NOT NULL, 
	resumes INTEGER NOT NULL, 
	restarts INTEGER NOT NULL, 
	cancel_requested BOOLEAN NOT NULL, 
	assigned_at DATETIME, 
	started_at DATETIME, 
	finished_at DATETIME, 
	last_report DATETIME, 
	error TEXT, 
	action VARCHAR(16), 
	changes JSON NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(deployment_id) REFERENCES deployments (id), 
	FOREIGN KEY(client_id) REFERENCES clients (id)
);
CREATE INDEX ix_targets_state ON targets (state);
CREATE INDEX ix_targets_client_id ON targets (client_id);
CREATE INDEX ix_targets_client_state ON targets (client_id, state);
CREATE INDEX ix_targets_deployment_id ON targets (deployment_id);
CREATE TABLE personalizations (
	id INTEGER NOT NULL, 
	deployment_id INTEGER NOT NULL, 
	new_sid BOOLEAN NOT NULL, 
	reset_ids BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(deployment_id) REFERENCES deployments (id)
);
CREATE UNIQUE INDEX ix_personalizations_deployment_id ON personalizations (deployment_id);
CREATE TABLE captures (
	id INTEGER NOT NULL, 
	deployment_id INTEGER NOT NULL, 
	image VARCHAR(255) NOT NULL, 
	"replace" BOOLEAN NOT NULL, 
	image_id VARCHAR(64), 
	bytes_read BIGINT NOT NULL, 
	bytes_received BIGINT NOT NULL, 
	chunks_new BIGINT NOT NULL, 
	chunks_known BIGINT NOT NULL, 
	packs_new INTEGER NOT NULL, 
	published_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(deployment_id) REFERENCES deployments (id)
);
CREATE INDEX ix_captures_image ON captures (image);
CREATE UNIQUE INDEX ix_captures_deployment_id ON captures (deployment_id);
CREATE TABLE capture_leases (
	id INTEGER NOT NULL, 
	capture_id INTEGER NOT NULL, 
	pack_id VARCHAR(64) NOT NULL, 
	expires_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (capture_id, pack_id), 
	FOREIGN KEY(capture_id) REFERENCES captures (id)
);
CREATE INDEX ix_capture_leases_pack_id ON capture_leases (pack_id);
CREATE INDEX ix_capture_leases_expires_at ON capture_leases (expires_at);
CREATE INDEX ix_capture_leases_capture_id ON capture_leases (capture_id);
INSERT INTO schema_version (version) VALUES (2);
