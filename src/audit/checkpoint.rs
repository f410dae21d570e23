//! Checkpoints: the head of every tenant's chain at one moment, MAC'd with
//! the anchor's KMS key and stored under Object Lock, outside the database.
//!
//! The chains in PostgreSQL are unkeyed: whoever can write the table as a
//! superuser can change a row and recompute every hash after it, cut a
//! chain's tail, or remove a whole tenant's chain, and the rows left still
//! verify. A checkpoint records each chain's head `(seq, hash)`; each head
//! hash commits to every row before it. So against any checkpoint:
//! - an edited row, even with its chain recomputed, changes the head hash;
//! - a cut tail or a removed chain loses the head row;
//! - a forged checkpoint fails its MAC (the key never leaves KMS), and an
//!   object under Object Lock cannot be removed or replaced.
//!
//! What happened after the latest checkpoint is covered by the unkeyed chain
//! only, so checkpoints are written every `--audit-checkpoint-interval` and
//! verification says how many rows are newer than the last one.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::anchor::{Anchor, AnchorError};
use super::{AuditLog, AuditRow, GENESIS};
use crate::backends::{Backend, BackendError};

/// Tag at the start of every checkpoint, so a later format is never read as
/// this one.
pub const FORMAT: &str = "tenantry-audit-checkpoint-v1";

/// The last row of a tenant's chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    pub seq: i64,
    /// RFC 3339, UTC.
    pub at: String,
    /// The trail's schema: one anchor bucket may serve several trails only
    /// if they never share a bucket prefix, so verification checks it.
    pub schema: String,
    /// SHA-256 (hex) of the previous checkpoint object, [`GENESIS`] for the
    /// first: a checkpoint cannot be left out of the sequence unnoticed.
    pub previous: String,
    pub heads: BTreeMap<String, Head>,
}

/// An object as stored: the checkpoint as one line of JSON (the exact bytes
/// the MAC covers), then the MAC in hex on a line of its own.
pub fn encode(message: &[u8], mac: &[u8]) -> Vec<u8> {
    let mut body = message.to_vec();
    body.push(b'\n');
    body.extend_from_slice(hex(mac).as_bytes());
    body.push(b'\n');
    body
}

/// The checkpoint, the bytes its MAC covers, and the MAC.
pub fn decode(body: &[u8]) -> Result<(Checkpoint, &[u8], Vec<u8>), String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
    let mut lines = text.lines();
    let (Some(message), Some(mac), None) = (lines.next(), lines.next(), lines.next()) else {
        return Err("not two lines (checkpoint, MAC)".to_string());
    };
    let checkpoint: Checkpoint =
        serde_json::from_str(message).map_err(|e| format!("not a checkpoint: {e}"))?;
    if checkpoint.format != FORMAT {
        return Err(format!("unknown format {:?}", checkpoint.format));
    }
    let mac = unhex(mac).ok_or_else(|| "the MAC is not hex".to_string())?;
    Ok((checkpoint, message.as_bytes(), mac))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn anchor_error(e: AnchorError) -> BackendError {
    match e {
        AnchorError::Aws(e) => e,
        other => BackendError::Rejected {
            backend: Backend::S3,
            message: format!("audit anchor: {other}"),
        },
    }
}

enum CheckpointFailure {
    /// Someone else wrote the seq first.
    Taken(AnchorError),
    Other(BackendError),
}

impl From<BackendError> for CheckpointFailure {
    fn from(e: BackendError) -> Self {
        Self::Other(e)
    }
}

/// The newest checkpoint written, as the writer remembers it.
#[derive(Clone, Debug)]
struct Latest {
    seq: i64,
    object_hash: String,
    heads: BTreeMap<String, Head>,
}

/// Re-checks the store's guards every round and, with an anchor, writes a
/// checkpoint whenever the heads have moved.
pub struct Checkpointer {
    log: AuditLog,
    anchor: Option<Anchor>,
    latest: Option<Latest>,
}

impl Checkpointer {
    pub fn new(log: AuditLog, anchor: Option<Anchor>) -> Self {
        Self {
            log,
            anchor,
            latest: None,
        }
    }

    /// One round: the guards, then a checkpoint if any head moved since the
    /// last one. The seq of the checkpoint written, if one was.
    pub async fn tick(&mut self) -> Result<Option<i64>, BackendError> {
        self.log.check_guards().await?;
        // Replicas (or operators of other shards) sharing the trail race for
        // the next seq; the loser reads what the winner wrote and goes on.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.write_checkpoint().await {
                Err(CheckpointFailure::Taken(e)) if attempts < 5 => {
                    tracing::debug!(error = %e, "audit checkpoint seq taken by another writer; reading it");
                }
                Err(CheckpointFailure::Taken(e)) => return Err(anchor_error(e)),
                Err(CheckpointFailure::Other(e)) => return Err(e),
                Ok(written) => return Ok(written),
            }
        }
    }

    async fn write_checkpoint(&mut self) -> Result<Option<i64>, CheckpointFailure> {
        let Some(anchor) = &self.anchor else {
            return Ok(None);
        };
        let heads = self.log.heads().await?;
        if self.latest.is_none() {
            self.latest = read_latest(anchor).await?;
        }
        let (seq, previous) = match &self.latest {
            Some(latest) if latest.heads == heads => return Ok(None),
            Some(latest) => (latest.seq + 1, latest.object_hash.clone()),
            None if heads.is_empty() => return Ok(None),
            None => (1, GENESIS.to_string()),
        };
        let checkpoint = Checkpoint {
            format: FORMAT.to_string(),
            seq,
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            schema: self.log.schema().to_string(),
            previous,
            heads,
        };
        let message = serde_json::to_vec(&checkpoint).map_err(|e| BackendError::Rejected {
            backend: Backend::S3,
            message: format!("audit checkpoint: {e}"),
        })?;
        let mac = anchor
            .mac(&message)
            .await
            .map_err(|e| CheckpointFailure::Other(anchor_error(e)))?;
        let body = encode(&message, &mac);
        if let Err(e) = anchor.put_checkpoint(seq, &body).await {
            // Whatever failed, what the anchor holds is read again.
            self.latest = None;
            return Err(match e {
                AnchorError::CheckpointExists { .. } => CheckpointFailure::Taken(e),
                other => CheckpointFailure::Other(anchor_error(other)),
            });
        }
        tracing::info!(seq, tenants = checkpoint.heads.len(), bucket = %anchor.bucket(), "audit checkpoint written");
        self.latest = Some(Latest {
            seq,
            object_hash: sha256_hex(&body),
            heads: checkpoint.heads,
        });
        Ok(Some(seq))
    }

    /// Ticks every `interval` until the process ends. A failed round is
    /// logged and retried; a failed guard check has already stopped every
    /// audit write (see [`AuditLog::check_guards`]).
    pub async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.tick().await {
                tracing::error!(%error, "audit checkpoint round failed");
            }
        }
    }
}

async fn read_latest(anchor: &Anchor) -> Result<Option<Latest>, BackendError> {
    let Some((seq, body)) = anchor.latest_checkpoint().await.map_err(anchor_error)? else {
        return Ok(None);
    };
    let (checkpoint, _, _) = decode(&body).map_err(|why| BackendError::Rejected {
        backend: Backend::S3,
        message: format!(
            "audit anchor {}: checkpoint {seq} cannot be read ({why}); run `tenantry audit verify`",
            anchor.bucket()
        ),
    })?;
    Ok(Some(Latest {
        seq,
        object_hash: sha256_hex(&body),
        heads: checkpoint.heads,
    }))
}

/// What the anchor says about the trail.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AnchorReport {
    pub checkpoints: usize,
    /// When the newest checkpoint was written.
    pub latest_at: Option<String>,
    /// Rows newer than the newest checkpoint: covered by the unkeyed chain
    /// only.
    pub rows_after_latest: usize,
    pub problems: Vec<String>,
}

/// Checks the trail against every checkpoint in the anchor: each MAC, the
/// sequence of checkpoints, and for each tenant head each recorded the row
/// still there with the same hash. `only` limits the head checks to one
/// tenant.
pub async fn verify(
    log: &AuditLog,
    anchor: &Anchor,
    only: Option<&str>,
) -> Result<AnchorReport, BackendError> {
    let objects = anchor.checkpoints().await.map_err(anchor_error)?;
    let rows = log.rows(None).await?;
    let mut chains: BTreeMap<&str, Vec<&AuditRow>> = BTreeMap::new();
    for row in &rows {
        chains.entry(row.tenant.as_str()).or_default().push(row);
    }
    let mut report = AnchorReport {
        checkpoints: objects.len(),
        ..AnchorReport::default()
    };
    let mut previous = GENESIS.to_string();
    let mut reported: std::collections::BTreeSet<String> = Default::default();
    let mut latest: Option<Checkpoint> = None;
    for (seq, body) in &objects {
        let object_hash = sha256_hex(body);
        let (checkpoint, message, mac) = match decode(body) {
            Ok(decoded) => decoded,
            Err(why) => {
                report
                    .problems
                    .push(format!("checkpoint {seq} cannot be read: {why}"));
                previous = object_hash;
                continue;
            }
        };
        if !anchor
            .verify_mac(message, &mac)
            .await
            .map_err(anchor_error)?
        {
            report.problems.push(format!(
                "checkpoint {seq}: its MAC does not verify with key {}: it was not written by tenantry",
                anchor.mac_key()
            ));
            previous = object_hash;
            continue;
        }
        if checkpoint.seq != *seq || checkpoint.schema != log.schema() {
            report.problems.push(format!(
                "checkpoint {seq}: it says seq {} of schema {:?}, stored as seq {seq} for schema {:?}",
                checkpoint.seq,
                checkpoint.schema,
                log.schema()
            ));
        }
        if checkpoint.previous != previous {
            report.problems.push(format!(
                "checkpoint {seq} does not follow the checkpoint before it: one is missing"
            ));
        }
        previous = object_hash;
        for (tenant, head) in &checkpoint.heads {
            // Only a tenant's first break is reported, so that one tampering
            // does not fill the report once per later checkpoint.
            if only.is_some_and(|o| o != tenant) || reported.contains(tenant) {
                continue;
            }
            let chain = chains.get(tenant.as_str()).map(Vec::as_slice);
            if let Some(problem) = head_problem(tenant, head, chain, *seq, &checkpoint.at) {
                reported.insert(tenant.clone());
                report.problems.push(problem);
            }
        }
        latest = Some(checkpoint);
    }
    report.rows_after_latest = rows_after(&rows, only, latest.as_ref());
    report.latest_at = latest.map(|latest| latest.at);
    Ok(report)
}

/// The rows (of `only`, if given) newer than what the `latest` checkpoint
/// recorded for their tenant: only the unkeyed chain vouches for them, so
/// the report says how many there are.
fn rows_after(rows: &[AuditRow], only: Option<&str>, latest: Option<&Checkpoint>) -> usize {
    rows.iter()
        .filter(|r| only.is_none_or(|o| o == r.tenant))
        .filter(|r| {
            latest.is_none_or(|latest| latest.heads.get(&r.tenant).is_none_or(|h| r.seq > h.seq))
        })
        .count()
}

/// How `tenant`'s chain, as it is now, contradicts the `head` checkpoint
/// `seq` (written `at`) recorded for it, if it does. The checkpoint's MAC
/// was verified, so where the two differ it is the trail that changed.
fn head_problem(
    tenant: &str,
    head: &Head,
    chain: Option<&[&AuditRow]>,
    seq: i64,
    at: &str,
) -> Option<String> {
    match chain.and_then(|c| c.iter().find(|r| r.seq == head.seq)) {
        _ if chain.is_none() => Some(format!(
            "tenant {tenant}: its whole chain is gone; checkpoint {seq} (at {at}) recorded its head at seq {}",
            head.seq
        )),
        None => Some(format!(
            "tenant {tenant}: row seq {}, the chain's head at checkpoint {seq} (at {at}), is missing: rows were removed",
            head.seq
        )),
        Some(row) if row.hash != head.hash => Some(format!(
            "tenant {tenant}: row seq {} has hash {}, but checkpoint {seq} (at {at}) recorded {}: \
             the chain was rewritten up to this row and its hashes recomputed",
            head.seq, row.hash, head.hash
        )),
        Some(_) => None,
    }
}

impl AuditLog {
    /// The head of every tenant's chain.
    pub async fn heads(&self) -> Result<BTreeMap<String, Head>, BackendError> {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT ON (tenant) tenant, seq, hash FROM {} ORDER BY tenant, seq DESC",
            self.table()
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| super::db_error("read the chain heads", e))?;
        Ok(rows
            .into_iter()
            .map(|(tenant, seq, hash)| (tenant, Head { seq, hash }))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            format: FORMAT.into(),
            seq: 3,
            at: "2026-12-02T10:00:00.000000Z".into(),
            schema: "tenantry_audit".into(),
            previous: GENESIS.into(),
            heads: BTreeMap::from([(
                "acme".to_string(),
                Head {
                    seq: 7,
                    hash: "ab".repeat(32),
                },
            )]),
        }
    }

    #[test]
    fn an_object_decodes_to_the_bytes_its_mac_covers() {
        let message = serde_json::to_vec(&checkpoint()).unwrap();
        let body = encode(&message, &[0xde, 0xad, 0x01]);
        let (decoded, covered, mac) = decode(&body).unwrap();
        assert_eq!(decoded, checkpoint());
        assert_eq!(covered, &message[..]);
        assert_eq!(mac, vec![0xde, 0xad, 0x01]);
    }

    #[test]
    fn a_malformed_object_is_refused_with_a_reason() {
        assert!(decode(b"{}").unwrap_err().contains("two lines"));
        assert!(
            decode(b"{}\nzz\n")
                .unwrap_err()
                .contains("not a checkpoint")
        );
        let message = serde_json::to_vec(&checkpoint()).unwrap();
        let mut body = message.clone();
        body.extend_from_slice(b"\nxyz\n");
        assert!(decode(&body).unwrap_err().contains("hex"));
        let other = serde_json::to_vec(&Checkpoint {
            format: "v0".into(),
            ..checkpoint()
        })
        .unwrap();
        assert!(
            decode(&encode(&other, &[1]))
                .unwrap_err()
                .contains("unknown format")
        );
    }
}
