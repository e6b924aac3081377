-- imc-actors: Kamailio's imc tables for MySQL and MariaDB (spec §8).
-- Same tables, columns, keys and version rows as Kamailio's imc-create.sql, so a Kamailio
-- imc database and one made from this file are interchangeable. InnoDB, because a batch of
-- changes is committed as one transaction (MyISAM has none).
-- Usage: mysql kamailio < schema/mysql.sql    (or: imc-actors db init)

-- Kamailio's table of schema versions (kept if the database already has it).
CREATE TABLE IF NOT EXISTS version (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INT UNSIGNED DEFAULT 0 NOT NULL,
    CONSTRAINT table_name_idx UNIQUE (table_name)
);

-- Rooms: flag PRIVATE=1.
CREATE TABLE imc_rooms (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    name VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    flag INT(11) NOT NULL,
    CONSTRAINT name_domain_idx UNIQUE (name, domain)
) ENGINE=InnoDB;

INSERT INTO version (table_name, table_version) VALUES ('imc_rooms', 1);

-- Members: room is 'sip:name@domain'; flag OWNER=1, ADMIN=2, INVITED=4.
CREATE TABLE imc_members (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    username VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    room VARCHAR(64) NOT NULL,
    flag INT(11) NOT NULL,
    CONSTRAINT account_room_idx UNIQUE (username, domain, room)
) ENGINE=InnoDB;

INSERT INTO version (table_name, table_version) VALUES ('imc_members', 1);

-- Users (digest authentication): Kamailio auth_db's subscriber table, as Kamailio makes it.
-- password is plaintext (Kamailio's choice; imc-actors never writes it), ha1 is
-- MD5(username:domain:password), ha1b MD5(username@domain:domain:password).
CREATE TABLE subscriber (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT '' NOT NULL,
    password VARCHAR(64) DEFAULT '' NOT NULL,
    ha1 VARCHAR(128) DEFAULT '' NOT NULL,
    ha1b VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT account_idx UNIQUE (username, domain)
) ENGINE=InnoDB;
CREATE INDEX username_idx ON subscriber (username);

INSERT INTO version (table_name, table_version) VALUES ('subscriber', 7);

-- imc-actors' own tables (Kamailio never reads them; `imc-actors db init` creates them too).
-- Notices waiting for an unreachable member: the columns of Kamailio msilo's silo table.
-- username/domain are the member's, lower case; inc_time/exp_time seconds since the epoch.
CREATE TABLE imc_pending (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    src_addr VARCHAR(255) NOT NULL,
    dst_addr VARCHAR(255) NOT NULL,
    username VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    inc_time BIGINT NOT NULL,
    exp_time BIGINT NOT NULL,
    ctype VARCHAR(255) DEFAULT '' NOT NULL,
    body BLOB NOT NULL,
    callid VARCHAR(255) DEFAULT '' NOT NULL,
    kind VARCHAR(16) DEFAULT 'notice' NOT NULL
) ENGINE=InnoDB;
CREATE INDEX imc_pending_account_idx ON imc_pending (username, domain, id);

-- The registrar's bindings: the columns of Kamailio usrloc's location table (expires in UTC).
CREATE TABLE imc_location (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    ruid VARCHAR(64) DEFAULT '' NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT NULL,
    contact VARCHAR(512) DEFAULT '' NOT NULL,
    received VARCHAR(128) DEFAULT NULL,
    path VARCHAR(512) DEFAULT NULL,
    expires DATETIME NOT NULL,
    q DECIMAL(10,2) DEFAULT 1.0 NOT NULL,
    callid VARCHAR(255) DEFAULT 'Default-Call-ID' NOT NULL,
    cseq INTEGER DEFAULT 1 NOT NULL,
    last_modified DATETIME NOT NULL,
    flags INTEGER DEFAULT 0 NOT NULL,
    cflags INTEGER DEFAULT 0 NOT NULL,
    user_agent VARCHAR(255) DEFAULT '' NOT NULL,
    socket VARCHAR(64) DEFAULT NULL,
    methods INTEGER DEFAULT NULL,
    instance VARCHAR(255) DEFAULT NULL,
    reg_id INTEGER DEFAULT 0 NOT NULL,
    server_id INTEGER DEFAULT 0 NOT NULL,
    connection_id INTEGER DEFAULT 0 NOT NULL,
    keepalive INTEGER DEFAULT 0 NOT NULL,
    `partition` INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT imc_location_ruid_idx UNIQUE (ruid)
) ENGINE=InnoDB;
CREATE INDEX imc_location_account_contact_idx ON imc_location (username, domain, contact);
CREATE INDEX imc_location_expires_idx ON imc_location (expires);

-- Our column in Kamailio's subscriber table: the SHA-256 HA1, SHA-256(username:domain:password)
-- (Kamailio ignores it; `imc-actors db init` adds it to an existing subscriber table).
ALTER TABLE subscriber ADD COLUMN ha1_sha256 VARCHAR(64) DEFAULT '' NOT NULL;

-- Server secrets by name: 'nonce' keys the HMAC of the digest nonces (hex; made on first start).
CREATE TABLE imc_secret (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    name VARCHAR(64) NOT NULL,
    value VARCHAR(255) NOT NULL,
    CONSTRAINT name_idx UNIQUE (name)
) ENGINE=InnoDB;

-- Moderation (#ban, #limit): a room's bans and its own member limit. room is the room URI
-- sip:name@domain, lower case, as are a ban's username/domain (username '*': a whole domain).
CREATE TABLE imc_bans (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    room VARCHAR(64) NOT NULL,
    username VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    reason VARCHAR(255) DEFAULT '' NOT NULL,
    banned_by VARCHAR(255) DEFAULT '' NOT NULL,
    ban_time BIGINT DEFAULT 0 NOT NULL
) ENGINE=InnoDB;
CREATE UNIQUE INDEX imc_bans_room_account_idx ON imc_bans (room, username, domain);
CREATE TABLE imc_room_limits (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    room VARCHAR(64) NOT NULL,
    max_members INTEGER NOT NULL
) ENGINE=InnoDB;
CREATE UNIQUE INDEX imc_room_limits_room_idx ON imc_room_limits (room);

-- Ownership (issue 13): which node serves which room. room is the room key 'name@domain'
-- (lower case); epoch rises by one at every acquisition, and each write for the room checks
-- it (fencing); expires and heartbeat are milliseconds since the epoch (the node's clock).
CREATE TABLE imc_leases (
    room VARCHAR(128) PRIMARY KEY NOT NULL,
    node VARCHAR(64) NOT NULL,
    epoch BIGINT NOT NULL,
    expires BIGINT NOT NULL
) ENGINE=InnoDB;
CREATE INDEX imc_leases_node_idx ON imc_leases (node);

-- The nodes: their SIP listen addresses (space-separated) and last heartbeat.
CREATE TABLE imc_nodes (
    name VARCHAR(64) PRIMARY KEY NOT NULL,
    addresses VARCHAR(1024) DEFAULT '' NOT NULL,
    heartbeat BIGINT NOT NULL
) ENGINE=InnoDB;

-- Each node's latest metrics snapshot (JSON; one row per node, replaced every
-- metrics_share_interval seconds): every node's /metrics shows the others' series from it.
CREATE TABLE imc_metrics (
    node VARCHAR(64) PRIMARY KEY NOT NULL,
    updated BIGINT NOT NULL,
    body TEXT NOT NULL
) ENGINE=InnoDB;

-- The archive of relayed chat lines (#history, replay on join). room is 'sip:name@domain' in
-- lower case, seq numbers the room's lines from 1, inc_time is seconds since the epoch,
-- ctype the Content-Type ('' when none); about history_max lines are kept per room.
CREATE TABLE imc_history (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    room VARCHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    sender VARCHAR(255) NOT NULL,
    inc_time BIGINT NOT NULL,
    ctype VARCHAR(255) DEFAULT '' NOT NULL,
    body BLOB NOT NULL,
    CONSTRAINT imc_history_room_seq_idx UNIQUE (room, seq)
) ENGINE=InnoDB;
CREATE INDEX imc_history_time_idx ON imc_history (inc_time);

-- What a room has beyond Kamailio's columns: its topic (who set it, when) and when it was
-- created (seconds since the epoch; NULL when unknown). room as in imc_history.
CREATE TABLE imc_room_info (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    room VARCHAR(64) NOT NULL,
    topic VARCHAR(255) DEFAULT '' NOT NULL,
    topic_by VARCHAR(255) DEFAULT '' NOT NULL,
    topic_time BIGINT DEFAULT NULL,
    created BIGINT DEFAULT NULL,
    CONSTRAINT imc_room_info_room_idx UNIQUE (room)
) ENGINE=InnoDB;

-- imc-actors: optional index (not in Kamailio; harmless to it). The default _ci collations
-- already compare names case-insensitively; this index keeps room deletes from scanning.
CREATE INDEX imc_members_room_idx ON imc_members (room);
