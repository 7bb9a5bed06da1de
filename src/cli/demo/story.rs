//! The steps of `keyseal demo`, told against a running worker and emulator,
//! and the status table that ends the story.

use std::fmt::Display;
use std::time::Instant;

use keyvault_emulator::admin::KeyAdmin;
use serde_json::Value;

use super::*;
use keyseal::client::AdminClient;

/// What one look at a condition being waited for found.
pub(super) enum Check<T> {
    /// The condition holds.
    Done(T),
    /// Not yet; what was seen, for the timeout message.
    NotYet(String),
}

/// The steps of the demo and what they share.
pub(super) struct Story<'a> {
    pub(super) narrator: &'a Narrator,
    pub(super) admin: AdminClient,
    pub(super) keys: &'a KeyAdmin,
    pub(super) amqp_url: &'a str,
    /// The tenant that brings its own key.
    pub(super) byok: String,
    /// The tenant that stays on managed keys.
    pub(super) managed: String,
}

impl Story<'_> {
    pub(super) async fn tell(&self) -> Result<(), DemoError> {
        let (byok, managed) = (&self.byok, &self.managed);
        let say = |line: String| self.narrator.say(line);

        // 1. Records come in and are stored encrypted under managed keys.
        let early = self.publish(byok, "rec-", RECORDS).await?;
        let others = self.publish(managed, "rec-", RECORDS).await?;
        say(format!(
            "1. published {RECORDS} records for {byok} and {RECORDS} for {managed}, each confirmed by RabbitMQ"
        ));
        for tenant in [byok, managed] {
            self.wait_records(tenant, RECORDS, "stored").await?;
        }
        say(format!("   stored encrypted in `hot` under managed data keys: {byok} {RECORDS}, {managed} {RECORDS}"));

        // 2. One tenant brings its own key.
        let key = format!("{byok}-key");
        let first = self.keys.create_rsa(&key).await?;
        let key_uri = self.keys.key_uri(&key);
        say(format!("2. the customer created RSA-2048 key {key_uri} (version {})", short(&first)));
        let enabled = self.admin.enable(byok, &key_uri).await?;
        say(format!(
            "   BYOK enabled for {byok} after validation (enabled, RSA, wrap/unwrap, purge protection): mode {}, \
             key version {}",
            text(&enabled["status"]["encryption"]["mode"]),
            short(text(&enabled["status"]["encryption"]["keyVersion"])),
        ));

        // 3. Sealing after the seal age.
        for tenant in [byok, managed] {
            self.wait_status(tenant, "its records to be sealed", |s| counts(s) == (0, RECORDS as u64)).await?;
        }
        say(format!(
            "3. sealed after {SEAL_AFTER}: {byok} {RECORDS} records under its own key, {managed} {RECORDS} under \
             the managed key"
        ));
        self.read_back(&early[7]).await?;

        // 4. A key roll: the vault gets a new version, keyseal follows.
        let second = self.keys.rotate(&key).await?;
        say(format!("4. the customer rotated the key: new version {}", short(&second)));
        let rolled = self
            .wait_status(byok, "the data keys to roll to the new version", |s| {
                s["encryption"]["keyVersion"] == second.as_str()
                    && s["encryption"]["rewrapPending"] == false
                    && s["dataKeys"]["onOlderRoot"] == 0
            })
            .await?;
        say(format!(
            "   KeyRolled: {byok} now on {}; {} data keys, {} on an older version (data keys rewrapped, no record \
             rewritten)",
            short(&second),
            rolled["dataKeys"]["total"],
            rolled["dataKeys"]["onOlderRoot"],
        ));

        // 5. The key breaks: degraded, then locked down.
        self.disable_every_version(&key, &second).await?;
        say(format!("5. the key broke: every version of {key} disabled in the vault"));
        let degraded = self.wait_status(byok, "the tenant to be degraded", |s| s["state"] == "degraded").await?;
        say(format!(
            "   degraded: {}; locked down at {} unless the key comes back; sealing waits",
            text(&degraded["keyHealth"]["reason"]),
            text(&degraded["keyHealth"]["lockdownAt"]),
        ));
        let late = self.publish(byok, "late-", LATE_RECORDS).await?;
        self.wait_records(byok, RECORDS + LATE_RECORDS, "stored while the key is broken").await?;
        say(format!("   {LATE_RECORDS} more records for {byok} stored meanwhile: ingestion goes on"));
        let locked = self.wait_status(byok, "the lockdown", |s| s["state"] == "locked_down").await?;
        say(format!(
            "   locked down (TenantLockedDown) {LOCKDOWN_AFTER} after the first failed probe: {}",
            text(&locked["keyHealth"]["reason"]),
        ));
        self.expect_refused(&early[7]).await?;
        self.read_back(&others[7]).await?;
        say(format!("   {managed} is unaffected by the lockdown of {byok}"));
        let held = self.wait_held_back(byok, LATE_RECORDS).await?;
        say(format!("   a sweep holds back {held} due records of {byok} in `hot`: nothing is lost"));

        // 6. The key is mended: restored, backlog sealed.
        self.keys.set_enabled(&key, Some(&second), true).await?;
        say(format!("6. the customer re-enabled version {} of {key}", short(&second)));
        self.wait_status(byok, "the restore", |s| s["state"] == "active").await?;
        say(format!("   restored (TenantRestored): {byok} active, key healthy, reads served again"));
        self.read_back(&late[3]).await?;
        let total = (RECORDS + LATE_RECORDS) as u64;
        self.wait_status(byok, "the backlog to be sealed", |s| counts(s) == (0, total)).await?;
        say(format!("   backlog sealed: {byok} hot 0, sealed {total}"));

        // 7. The customer key is removed; the data stays encrypted.
        let disabled = self.admin.disable(byok).await?;
        say(format!(
            "7. BYOK disabled for {byok}: mode {}, {} sealed data key(s) rewrapped under the managed key",
            text(&disabled["status"]["encryption"]["mode"]),
            disabled["rewrap"]["rewrapped"],
        ));
        self.read_back(&late[3]).await?;

        // 8. The nightly maintenance, run now: every record decrypts and verifies.
        let scrub = self.admin.sweep("scrub").await?;
        say(format!(
            "8. scrub (normally nightly, --reencrypt-schedule): {} records decrypted and verified, {} corrupt",
            scrub["scrub"]["verified"], scrub["scrub"]["corruptCount"],
        ));

        let mut statuses = Vec::new();
        for tenant in [byok, managed] {
            statuses.push(self.admin.tenant_status(tenant).await?);
        }
        say("final status:".to_owned());
        print!("{}", status_table(&statuses));
        Ok(())
    }

    /// Publishes `count` synthetic records with confirms; returns them.
    async fn publish(&self, tenant: &str, prefix: &str, count: usize) -> Result<Vec<IngestRecord>, DemoError> {
        let records = publish::synthetic(tenant, prefix, count, PAYLOAD_BYTES, SystemClock.now_ms());
        let publisher = Publisher::connect(self.amqp_url).await?;
        let unconfirmed = publisher.publish_until_confirmed(&records, PUBLISH_WINDOW, 3).await?;
        if unconfirmed > 0 {
            return Err(DemoError::Unconfirmed { unconfirmed, total: records.len() });
        }
        Ok(records)
    }

    /// Polls `check` until it is done, or fails after [`STEP_TIMEOUT`].
    async fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> Result<Check<T>, DemoError>,
    ) -> Result<T, DemoError> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let last = match check().await? {
                Check::Done(value) => return Ok(value),
                Check::NotYet(seen) => seen,
            };
            if Instant::now() >= deadline {
                return Err(DemoError::Timeout { what: what.to_owned(), waited: STEP_TIMEOUT, last });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits until the tenant's status satisfies `done`; returns that status.
    async fn wait_status(&self, tenant: &str, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value, DemoError> {
        self.wait_for(&format!("{what} ({tenant})"), async || match self.admin.tenant_status(tenant).await {
            Ok(status) if done(&status) => Ok(Check::Done(status)),
            Ok(status) => Ok(Check::NotYet(status.to_string())),
            Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {
                Ok(Check::NotYet("no record stored yet".to_owned()))
            }
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// Waits until the tenant holds `total` records, hot and sealed together.
    async fn wait_records(&self, tenant: &str, total: usize, what: &str) -> Result<(), DemoError> {
        self.wait_status(tenant, &format!("{total} records {what}"), |s| {
            let (hot, sealed) = counts(s);
            hot + sealed == total as u64
        })
        .await
        .map(drop)
    }

    /// Runs sweeps until one holds back `due` records of `tenant` (they are
    /// due once they are older than the seal age); returns how many it held.
    async fn wait_held_back(&self, tenant: &str, due: usize) -> Result<u64, DemoError> {
        let what = format!("a sweep to hold back {due} records of {tenant}");
        self.wait_for(&what, async || {
            let summary = self.admin.sweep("seal").await?;
            let held = &summary["seal"]["heldBack"][tenant];
            Ok(match held.as_u64() {
                Some(n) if n == due as u64 => Check::Done(n),
                _ => Check::NotYet(summary.to_string()),
            })
        })
        .await
    }

    /// Breaks the key the way an owner would: disables every version,
    /// the current one last, so keyseal never sees an older version as the
    /// newest usable one in between (it would roll back to it).
    async fn disable_every_version(&self, key: &str, current: &str) -> Result<(), DemoError> {
        let versions = self.keys.versions(key).await?;
        for version in versions.iter().filter(|v| v.enabled && v.version != current) {
            self.keys.set_enabled(key, Some(&version.version), false).await?;
        }
        self.keys.set_enabled(key, Some(current), false).await?;
        Ok(())
    }

    /// Reads a record through the admin API and checks it is the one published.
    async fn read_back(&self, record: &IngestRecord) -> Result<(), DemoError> {
        let (tenant, id) = (&record.tenant_id, &record.record_id);
        let payload = self.admin.record(tenant, id).await?;
        if payload != record.payload {
            return Err(DemoError::Unexpected {
                step: format!("reading {tenant}/{id}"),
                expected: "the published payload".to_owned(),
                got: format!("{} different bytes", payload.len()),
            });
        }
        self.narrator
            .say(format!("   read {tenant}/{id}: 200, {} bytes, identical to what was published", payload.len()));
        Ok(())
    }

    /// Reads a record of a locked-down tenant and checks it is refused with 423.
    async fn expect_refused(&self, record: &IngestRecord) -> Result<(), DemoError> {
        let (tenant, id) = (&record.tenant_id, &record.record_id);
        let unexpected = |got: String| DemoError::Unexpected {
            step: format!("reading {tenant}/{id} while locked down"),
            expected: "423 tenant_locked_down".to_owned(),
            got,
        };
        match self.admin.record(tenant, id).await {
            Err(ClientError::Api { status, code, message }) if status == StatusCode::LOCKED => {
                self.narrator.say(format!("   read {tenant}/{id}: {} {code}: {message}", status.as_u16()));
                Ok(())
            }
            Err(ClientError::Api { status, code, .. }) => Err(unexpected(format!("{status} {code}"))),
            Err(e) => Err(e.into()),
            Ok(payload) => Err(unexpected(format!("200 with {} bytes", payload.len()))),
        }
    }
}

/// (hot, sealed) of a tenant status.
fn counts(status: &Value) -> (u64, u64) {
    let count = |layer: &str| status["records"][layer].as_u64().unwrap_or(0);
    (count("hot"), count("sealed"))
}

/// A JSON string's text, or `-` for anything else (null).
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// The first 8 characters of a key version: enough to tell versions apart.
fn short(version: &str) -> &str {
    version.get(..8).unwrap_or(version)
}

/// The final table: one row per tenant status (`GET /v1/tenants/{tenant}`).
fn status_table(statuses: &[Value]) -> String {
    let rows: Vec<[String; 7]> = statuses
        .iter()
        .map(|s| {
            let (hot, sealed) = counts(s);
            let health = match s["keyHealth"]["reason"].as_str() {
                Some(reason) => format!("{} ({reason})", text(&s["keyHealth"]["status"])),
                None => text(&s["keyHealth"]["status"]).to_owned(),
            };
            [
                text(&s["tenant"]).to_owned(),
                text(&s["state"]).to_owned(),
                text(&s["encryption"]["mode"]).to_owned(),
                short(text(&s["encryption"]["keyVersion"])).to_owned(),
                hot.to_string(),
                sealed.to_string(),
                health,
            ]
        })
        .collect();
    let header = ["tenant", "state", "mode", "key version", "hot", "sealed", "key health"].map(str::to_owned);
    let widths: Vec<usize> = (0..header.len())
        .map(|column| std::iter::once(&header).chain(&rows).map(|row| row[column].chars().count()).max().unwrap_or(0))
        .collect();
    let mut table = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::from("  ");
        for (column, cell) in row.iter().enumerate() {
            // Counts align right, text left; the last column is not padded.
            let cell = match column {
                4 | 5 => format!("{cell:>width$}", width = widths[column]),
                6 => cell.clone(),
                _ => format!("{cell:<width$}", width = widths[column]),
            };
            line.push_str(&cell);
            line.push_str("  ");
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    table
}

/// Prints narration lines with the time since the demo started.
pub(super) struct Narrator {
    started: Instant,
}

impl Narrator {
    pub(super) fn start() -> Self {
        Self { started: Instant::now() }
    }

    pub(super) fn say(&self, line: impl Display) {
        println!("[{:>4.1}s] {line}", self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_status_table_has_a_row_per_tenant_with_aligned_columns() {
        let acme = json!({
            "tenant": "acme-00ff", "state": "locked_down",
            "encryption": {"mode": "customer_key", "keyVersion": "0123456789abcdef"},
            "records": {"hot": 20, "sealed": 50},
            "keyHealth": {"status": "unavailable", "reason": "key_disabled"},
        });
        let globex = json!({
            "tenant": "globex-00ff", "state": "active",
            "encryption": {"mode": "managed", "keyVersion": null},
            "records": {"hot": 0, "sealed": 50},
            "keyHealth": {"status": "healthy", "reason": null},
        });
        let table = status_table(&[acme, globex]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("tenant") && lines[0].contains("key health"), "{table}");
        assert!(lines[1].contains("locked_down") && lines[1].contains("01234567 "), "{table}");
        assert!(lines[1].ends_with("unavailable (key_disabled)"), "{table}");
        assert!(lines[2].contains("managed") && lines[2].ends_with("healthy"), "{table}");
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(column(lines[0], "state"), column(lines[1], "locked_down"));
        assert_eq!(column(lines[0], "state"), column(lines[2], "active"));
    }
}
