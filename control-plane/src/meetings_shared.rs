//! Meetings through the control plane's database, so that every replica sharing it, and this
//! one after a restart, gives a meeting the same SFU and the same cascade SFUs. The table in
//! memory (`crate::meetings`, pure) decides; this module first reads the stored meeting into
//! it, then writes back what the decision changed, only over the row as it was read (compare
//! and set): of two replicas changing one meeting at once, the second finds the first's and
//! decides again on it. With the database out of reach a replica answers from its own table
//! (logged); a meeting it placed meanwhile is stored by the next request for it.

use crate::app::App;
use crate::meetings::{Meeting, Meetings};

/// Decisions on one meeting before a replica that keeps losing the race to another answers
/// from its own table.
const TRIES: usize = 3;

/// Runs `decide` on the meeting table once it holds the stored meeting of `room`, and stores
/// what it made of that meeting (changed, moved, ended); `decide`'s answer.
pub async fn decide<R>(
    app: &App,
    room: &str,
    mut decide: impl FnMut(&mut Meetings) -> R,
) -> Result<R, TablePoisoned> {
    let mut tries = 0;
    loop {
        tries += 1;
        // While the database is known to be out of reach, requests do not each wait for
        // its timeout (the replica task finds out when it is back).
        let stored = match app.store.health().is_up() {
            false => None,
            true => match app.store.meeting(room).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(room, error = %e, "A meeting could not be read from the database; this replica answers from its own table.");
                    None
                }
            },
        };
        let (answer, after) = {
            let mut table = app.meetings.lock().map_err(|_| TablePoisoned)?;
            if let Some(Some(s)) = &stored {
                table.learn(s.value.clone());
            }
            let answer = decide(&mut table);
            (answer, table.get(room).cloned())
        };
        let Some(stored) = stored else {
            return Ok(answer);
        };
        let written = match (&stored, &after) {
            (Some(s), Some(a)) if s.value == *a => Ok(true),
            (Some(s), Some(a)) => app.store.replace_meeting(s, a).await,
            (Some(s), None) => app.store.remove_meeting(s).await,
            (None, Some(a)) => app.store.insert_meeting(a).await,
            (None, None) => Ok(true),
        };
        match written {
            Ok(true) => return Ok(answer),
            Ok(false) if tries < TRIES => {
                tracing::debug!(
                    room,
                    "Another replica changed a meeting first; deciding again on its version."
                );
            }
            Ok(false) => {
                tracing::warn!(
                    room,
                    tries,
                    "Other replicas kept changing a meeting first; this replica answers from its own table."
                );
                return Ok(answer);
            }
            Err(e) => {
                tracing::warn!(room, error = %e, "A meeting could not be stored; this replica answers from its own table.");
                return Ok(answer);
            }
        }
    }
}

/// Stores a meeting just placed (logged when the database is out of reach: the next request
/// for it stores it).
pub async fn store_new(app: &App, m: &Meeting) {
    match app.store.insert_meeting(m).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(room = %m.room, "A new meeting's room name was stored already; the stored meeting is kept.");
        }
        Err(e) => {
            tracing::warn!(room = %m.room, error = %e, "A new meeting could not be stored; this replica holds it alone until a request for it stores it.");
        }
    }
}

/// Forgets the meetings that ended, in this replica's table and in the database (each only
/// as it was read: a meeting another replica just moved stays).
pub async fn prune(app: &App, grace: u64) {
    let now = estuary_common::unix_now();
    let rooms = app.registry.rooms();
    if let Ok(mut table) = app.meetings.lock() {
        table.prune(now, grace, &rooms);
    }
    let Ok(stored) = app.store.meetings().await else {
        return;
    };
    for s in stored {
        if !s.value.lasts(now, grace, &rooms) {
            match app.store.remove_meeting(&s).await {
                Ok(true) => {
                    tracing::debug!(room = %s.value.room, "An ended meeting was forgotten.")
                }
                Ok(false) => {}
                Err(_) => return,
            }
        }
    }
}

/// The meeting table's lock was poisoned (a panic while it was held).
#[derive(Debug, thiserror::Error)]
#[error("the meeting table's lock is poisoned")]
pub struct TablePoisoned;
