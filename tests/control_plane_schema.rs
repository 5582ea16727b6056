//! The control plane's PostgreSQL schema has a version: a database made before versions
//! existed is brought up to date with its rows, and one made by a newer build is refused at
//! start with a message that says so. (The SQLite store's migrations are unit-tested in
//! `control-plane/src/store/sqlite.rs`.)

mod common;

use std::time::Duration;

use common::cp_site::*;
use common::postgres::Postgres;
use common::*;

/// The tables as the control plane made them before the schema had a version.
const UNVERSIONED: &str = "
CREATE TABLE sites (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE nodes (id TEXT PRIMARY KEY, body TEXT NOT NULL, last_heartbeat BIGINT NOT NULL);
CREATE TABLE purges (id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, who TEXT NOT NULL, target TEXT NOT NULL);
CREATE TABLE purge_deliveries (purge BIGINT NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL, last_error TEXT, updated_at BIGINT NOT NULL, PRIMARY KEY (purge, node));
CREATE TABLE placements (asset TEXT NOT NULL, node TEXT NOT NULL, site TEXT NOT NULL,
    state TEXT NOT NULL, bytes BIGINT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (asset, node));
CREATE TABLE asset_roots (asset TEXT PRIMARY KEY, merkle_root TEXT NOT NULL);
CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, who TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL);
INSERT INTO asset_roots VALUES ('movie', 'abc123');
";

#[test]
fn an_unversioned_postgres_database_is_migrated_and_a_newer_one_refused() {
    let pg = Postgres::start("cp-schema");
    let database = pg.database("estuary_cp");
    pg.psql("estuary_cp", UNVERSIONED).expect("old schema");
    let cp = ControlPlane::with_database("cp-schema", &database);
    let mut process = cp.start();
    // Version 1 (the tables it had), then version 2 (pending pushes) and 3 (meetings).
    assert_eq!(
        pg.psql("estuary_cp", "SELECT version FROM schema_version"),
        Ok("3".to_owned())
    );
    assert_eq!(
        pg.psql("estuary_cp", "SELECT count(*) FROM meetings"),
        Ok("0".to_owned())
    );
    assert_eq!(
        pg.psql("estuary_cp", "SELECT count(*) FROM pending_pushes"),
        Ok("0".to_owned())
    );
    assert_eq!(
        pg.psql(
            "estuary_cp",
            "SELECT merkle_root FROM asset_roots WHERE asset = 'movie'"
        ),
        Ok("abc123".to_owned())
    );
    process.signal("TERM");
    assert!(
        process.wait_exit(Duration::from_secs(30)),
        "{}",
        process.log()
    );

    // A newer build's database: the start fails, saying why.
    pg.psql("estuary_cp", "UPDATE schema_version SET version = 99")
        .expect("newer");
    let config = cp.dir.path().join("cp.toml");
    let mut refused = spawn_service("control-plane", &config, cp.http, cp.dir.path());
    assert!(!refused.wait_exit(Duration::from_secs(60)));
    let log = refused.log();
    assert!(
        log.contains("schema version 99 is newer than this build knows (3)"),
        "{log}"
    );
}
