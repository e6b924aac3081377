-- imc-actors: Kamailio's imc tables for PostgreSQL (spec §8).
-- Same tables, columns, keys and version rows as Kamailio's imc-create.sql, so a Kamailio
-- imc database and one made from this file are interchangeable.
-- Usage: psql -d kamailio -f schema/postgresql.sql    (or: imc-actors db init)

-- Kamailio's table of schema versions (kept if the database already has it).
CREATE TABLE IF NOT EXISTS version (
    id SERIAL PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_table_name_idx UNIQUE (table_name)
);

-- Rooms: flag PRIVATE=1.
CREATE TABLE imc_rooms (
    id SERIAL PRIMARY KEY NOT NULL,
    name VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    flag INTEGER NOT NULL,
    CONSTRAINT imc_rooms_name_domain_idx UNIQUE (name, domain)
);

INSERT INTO version (table_name, table_version) VALUES ('imc_rooms', 1);

-- Members: room is 'sip:name@domain'; flag OWNER=1, ADMIN=2, INVITED=4.
CREATE TABLE imc_members (
    id SERIAL PRIMARY KEY NOT NULL,
    username VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    room VARCHAR(64) NOT NULL,
    flag INTEGER NOT NULL,
    CONSTRAINT imc_members_account_room_idx UNIQUE (username, domain, room)
);

INSERT INTO version (table_name, table_version) VALUES ('imc_members', 1);

-- imc-actors: optional indexes (not in Kamailio; harmless to it). PostgreSQL compares text
-- case-sensitively, so names are matched with lower(); these keep those lookups and room
-- deletes from scanning the tables.
CREATE INDEX IF NOT EXISTS imc_rooms_ci_idx ON imc_rooms (lower(name), lower(domain));
CREATE INDEX IF NOT EXISTS imc_members_room_ci_idx ON imc_members (lower(room), lower(username), lower(domain));
