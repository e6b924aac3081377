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

-- imc-actors: optional index (not in Kamailio; harmless to it). The default _ci collations
-- already compare names case-insensitively; this index keeps room deletes from scanning.
CREATE INDEX imc_members_room_idx ON imc_members (room);
