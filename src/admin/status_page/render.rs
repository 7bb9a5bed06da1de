//! The status page's HTML: [`render`] turns a [`Snapshot`] into a complete
//! page, purely, escaping every string it did not write itself.

use std::fmt::{self, Write};
use std::time::Duration;

use super::snapshot::{OVERDUE_SCAN_LIMIT, REFRESH_SECONDS, Snapshot, TenantRow};
use crate::clock::rfc3339;
use crate::proto::names::{TENANT_STATES, state_name};
use crate::proto::store::TenantState;

/// The page for `snapshot`, as a complete HTML document.
pub fn render(snapshot: &Snapshot) -> String {
    let mut html = String::with_capacity(4096 + 640 * snapshot.tenants.len());
    write_page(&mut html, snapshot).expect("writing to a String cannot fail");
    html
}

const STYLE: &str = "\
:root{color-scheme:light;font-family:system-ui,sans-serif;line-height:1.45;color:#1f2937;background:#f9fafb}
body{margin:2rem auto;max-width:75rem;padding:0 1rem}
h1{font-size:1.5rem;margin:0}
h2{font-size:1.1rem;margin:1.75rem 0 .5rem}
header p,small,thead th{color:#4b5563}
.summary{display:flex;flex-wrap:wrap;gap:.75rem;margin:0}
.summary div{background:#fff;border:1px solid #e5e7eb;border-radius:.5rem;padding:.5rem 1rem;min-width:11rem}
.summary dt{font-size:.8rem;color:#4b5563}
.summary dd{margin:0;font-size:1.15rem}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e5e7eb}
th,td{text-align:left;padding:.45rem .7rem;border-bottom:1px solid #e5e7eb;vertical-align:top}
thead th{font-size:.8rem;font-weight:600;white-space:nowrap}
time{white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.05rem .55rem;border-radius:1rem;font-size:.85rem;font-weight:600;white-space:nowrap}
.state-active{background:#dcfce7;color:#14532d}
.state-degraded{background:#fef3c7;color:#78350f}
.state-locked_down{background:#fee2e2;color:#7f1d1d}
.state-erased{background:#e5e7eb;color:#374151}
.ok{color:#15803d}
.bad,.health-unavailable{color:#b91c1c;font-weight:600}
.late{color:#b45309;font-weight:600}
.empty{padding:1rem;background:#fff;border:1px dashed #d1d5db;border-radius:.5rem}
";

fn write_page(out: &mut String, s: &Snapshot) -> fmt::Result {
    write!(
        out,
        "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">
<title>keyseal status</title>
<style>
{STYLE}</style>
</head>
<body>
<header>
<h1>keyseal status</h1>
<p>As of {}; this page refreshes every {REFRESH_SECONDS} seconds.</p>
</header>
<main>
",
        Time(s.taken_at_ms)
    )?;
    write_summary(out, s)?;
    write_shards(out, s)?;
    write_tenants(out, &s.tenants, s.census.tenants())?;
    out.push_str("</main>\n</body>\n</html>\n");
    Ok(())
}

fn write_summary(out: &mut String, s: &Snapshot) -> fmt::Result {
    let (amqp_class, amqp_text) = if s.amqp_ready { ("ok", "consuming") } else { ("bad", "not consuming") };
    let per_state =
        TENANT_STATES.map(|state| format!("{} {}", s.census.in_state(state), state_label(state))).join(", ");
    let (hot, sealed) = (s.census.hot_records, s.census.sealed_records);
    write!(
        out,
        "<section aria-labelledby=\"worker\">
<h2 id=\"worker\">Worker</h2>
<dl class=\"summary\">
<div><dt>RabbitMQ</dt><dd class=\"{amqp_class}\">{amqp_text}</dd></div>
<div><dt>Tenants</dt><dd>{} <small>({per_state})</small></dd></div>
<div><dt>Records</dt><dd>{hot} hot, {sealed} sealed</dd></div>
<div><dt>Seal lag</dt><dd>{} <small>(records seal after {})</small></dd></div>
<div><dt>Shards owned</dt><dd>{} <small>(of {})</small></dd></div>
</dl>
</section>
",
        s.census.tenants(),
        Lag(Some(s.seal_lag)),
        humantime::format_duration(s.seal_after),
        s.shards,
        s.shard_count,
    )
}

/// The deployment's shards, one row each; this worker's are marked.
fn write_shards(out: &mut String, s: &Snapshot) -> fmt::Result {
    out.push_str(
        "<section aria-labelledby=\"shards\">
<h2 id=\"shards\">Shards</h2>
<table>
<thead><tr><th scope=\"col\" class=\"num\">Shard</th><th scope=\"col\">Owner</th><th scope=\"col\">Since</th>\
<th scope=\"col\" class=\"num\">Tenants</th></tr></thead>
<tbody>
",
    );
    for line in &s.deployment {
        write!(out, "<tr data-shard=\"{}\">\n<th scope=\"row\" class=\"num\">{}</th>\n", line.shard, line.shard)?;
        match &line.owner {
            Some(owner) if s.shards.0.contains(&line.shard) => {
                writeln!(out, "<td>{} <small>(this worker)</small></td>", Escaped(owner))?
            }
            Some(owner) => writeln!(out, "<td>{}</td>", Escaped(owner))?,
            None => out.push_str("<td class=\"bad\">no owner</td>\n"),
        }
        match &line.since {
            Some(since) => writeln!(out, "<td><time datetime=\"{0}\">{0}</time></td>", Escaped(since))?,
            None => out.push_str("<td>–</td>\n"),
        }
        match line.tenants {
            Some(tenants) => write!(out, "<td class=\"num\">{tenants}</td>\n</tr>\n")?,
            None => out.push_str("<td class=\"num\">–</td>\n</tr>\n"),
        }
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn write_tenants(out: &mut String, tenants: &[TenantRow], total: usize) -> fmt::Result {
    out.push_str("<section aria-labelledby=\"tenants\">\n<h2 id=\"tenants\">Tenants</h2>\n");
    if tenants.len() < total {
        writeln!(
            out,
            "<p class=\"note\">Showing {} of {total} tenants: locked down and degraded first, then by id. \
             <code>GET /v1/tenants/{{tenant}}</code> shows any tenant.</p>",
            tenants.len()
        )?;
    }
    if tenants.is_empty() {
        out.push_str(
            "<p class=\"empty\">No tenants yet: a tenant appears with its first record or key.</p>\n</section>\n",
        );
        return Ok(());
    }
    out.push_str(
        "<table>
<thead><tr><th scope=\"col\">Tenant</th><th scope=\"col\">State</th><th scope=\"col\">Encryption</th>\
<th scope=\"col\">Key health</th><th scope=\"col\" class=\"num\">Hot</th><th scope=\"col\" class=\"num\">Sealed</th>\
<th scope=\"col\" class=\"num\">Seal lag</th></tr></thead>
<tbody>
",
    );
    for row in tenants {
        write_tenant(out, row)?;
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn write_tenant(out: &mut String, row: &TenantRow) -> fmt::Result {
    let p = &row.projection;
    let state = p.state();
    let tenant = Escaped(&row.tenant);
    write!(
        out,
        "<tr data-tenant=\"{tenant}\" data-state=\"{name}\">\n<th scope=\"row\">{tenant}</th>\n\
         <td><span class=\"badge state-{name}\">{label}</span>",
        name = state_name(state),
        label = state_label(state),
    )?;
    if state != TenantState::Active {
        write!(out, "<br><small>since {}</small>", Time(p.state_since_unix_ms))?;
    }
    if p.key_uri.is_empty() {
        out.push_str("</td>\n<td>managed key</td>\n");
    } else {
        write!(
            out,
            "</td>\n<td>customer key<br><small>version <code>{}</code></small></td>\n",
            Escaped(&p.key_version)
        )?;
    }
    let health = &row.health;
    write!(out, "<td><span class=\"health-{status}\">{status}</span>", status = health.status())?;
    // Only an outage gets its time here: a healthy key's `since` marks a
    // recovery, which the state column already dates.
    if let Some(reason) = &health.reason {
        write!(out, " <code>{}</code>", Escaped(reason))?;
        if let Some(since) = health.since_ms {
            write!(out, "<br><small>since {}</small>", Time(since))?;
        }
    }
    if let Some(at) = health.lockdown_at_ms {
        write!(out, "<br><strong>locks down at {}</strong>", Time(at))?;
    }
    if let Some(at) = health.expiring_at_ms {
        write!(out, "<br><strong class=\"late\" data-expiring>key expires {}</strong>", Time(at))?;
    }
    write!(
        out,
        "</td>\n<td class=\"num\">{}</td>\n<td class=\"num\">{}</td>\n<td class=\"num\">{}</td>\n</tr>\n",
        p.hot_records,
        p.sealed_records,
        Lag(row.seal_lag)
    )
}

/// What the page calls a state: its API name, in words.
fn state_label(state: TenantState) -> String {
    state_name(state).replace('_', " ")
}

/// Text made safe for element content and quoted attribute values.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A `<time>` element for a Unix-millisecond time: RFC 3339 for machines,
/// to the second for people.
struct Time(i64);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = rfc3339(self.0);
        let (date, time) = at.split_once('T').unwrap_or((&at, ""));
        let seconds = time.get(..8).unwrap_or(time);
        write!(f, "<time datetime=\"{at}\">{date} {seconds} UTC</time>")
    }
}

/// A seal lag to whole seconds, highlighted when records are overdue.
struct Lag(Option<Duration>);

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(lag) if lag.as_secs() == 0 => f.write_str("0s"),
            Some(lag) => write!(
                f,
                "<span class=\"late\">{}</span>",
                humantime::format_duration(Duration::from_secs(lag.as_secs()))
            ),
            None => write!(
                f,
                "<small title=\"more than {OVERDUE_SCAN_LIMIT} records are overdue; this tenant's were not reached\">not measured</small>"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::shards_api::ShardLine;
    use crate::health::policy::KeyHealthView;
    use crate::placement::ShardList;
    use crate::proto::store::TenantProjection;
    use crate::storage::TenantCensus;

    const GRACE: Duration = Duration::from_secs(50 * 60);

    fn row(tenant: &str, projection: TenantProjection, seal_lag: Option<Duration>) -> TenantRow {
        TenantRow { health: KeyHealthView::of(&projection, GRACE), tenant: tenant.into(), projection, seal_lag }
    }

    fn page(tenants: Vec<TenantRow>) -> String {
        render(&Snapshot {
            taken_at_ms: 1_700_000_000_000,
            amqp_ready: true,
            seal_after: Duration::from_secs(48 * 3600),
            seal_lag: Duration::from_secs(90),
            shards: ShardList([0, 3].into()),
            shard_count: 4,
            deployment: (0..4)
                .map(|shard| ShardLine {
                    shard,
                    owner: (shard != 2).then(|| if shard % 3 == 0 { "here:1" } else { "<b>there</b>:2" }.to_owned()),
                    since: (shard != 2).then(|| "2026-12-07T01:00:00.000Z".to_owned()),
                    tenants: (shard != 2).then_some(u64::from(shard) * 10),
                })
                .collect(),
            census: census_of(&tenants),
            tenants,
        })
    }

    fn census_of(rows: &[TenantRow]) -> TenantCensus {
        let mut census = TenantCensus::default();
        for row in rows {
            census.by_state[row.projection.state() as usize] += 1;
            census.hot_records += row.projection.hot_records;
            census.sealed_records += row.projection.sealed_records;
        }
        census
    }

    /// The HTML of one tenant's row.
    fn row_of<'a>(html: &'a str, tenant: &str) -> &'a str {
        let start = html.find(&format!("<tr data-tenant=\"{tenant}\"")).expect("the tenant's row");
        let end = start + html[start..].find("</tr>").expect("the row ends");
        &html[start..end]
    }

    fn locked_down(reason: &str) -> TenantProjection {
        let mut p = TenantProjection {
            hot_records: 7,
            sealed_records: 3,
            key_uri: "https://vault.example/keys/k".into(),
            key_version: "v1".into(),
            state_since_unix_ms: 2_000,
            health_reason: reason.into(),
            degraded_since_unix_ms: 1_000,
            ..Default::default()
        };
        p.set_state(TenantState::LockedDown);
        p
    }

    #[test]
    fn a_locked_down_tenant_shows_as_locked_down_in_text_class_and_row() {
        let html = page(vec![
            row("acme", locked_down("key_disabled"), Some(Duration::from_secs(3_720))),
            row("beta", TenantProjection { hot_records: 2, ..Default::default() }, Some(Duration::ZERO)),
        ]);
        let acme = row_of(&html, "acme");
        assert!(acme.starts_with("<tr data-tenant=\"acme\" data-state=\"locked_down\">"), "{acme}");
        assert!(acme.contains("<span class=\"badge state-locked_down\">locked down</span>"), "{acme}");
        assert!(acme.contains("<code>key_disabled</code>"), "{acme}");
        assert!(acme.contains("customer key") && acme.contains("<code>v1</code>"), "{acme}");
        assert!(acme.contains(">1h 2m<"), "the tenant's seal lag: {acme}");
        assert!(!acme.contains("locks down at"), "no deadline once locked down");
        let beta = row_of(&html, "beta");
        assert!(beta.contains("data-state=\"active\"") && beta.contains(">active</span>"), "{beta}");
        assert!(beta.contains("managed key") && beta.contains(">healthy</span>"), "{beta}");
        assert!(html.contains("<dd>2 <small>(1 active, 0 degraded, 1 locked down, 0 erased)</small></dd>"), "{html}");
        assert!(html.contains("9 hot, 3 sealed"), "totals");
        assert!(html.contains(">1m 30s<"), "the worker's seal lag");
    }

    #[test]
    fn a_degraded_tenant_shows_when_it_will_be_locked_down() {
        let mut p = locked_down("vault_unreachable");
        p.set_state(TenantState::Degraded);
        let html = page(vec![row("acme", p, Some(Duration::ZERO))]);
        let acme = row_of(&html, "acme");
        assert!(acme.contains("data-state=\"degraded\""), "{acme}");
        // Degraded since 1 s after the epoch, with a 50-minute grace.
        assert!(
            acme.contains("locks down at <time datetime=\"1970-01-01T00:50:01.000Z\">1970-01-01 00:50:01 UTC</time>"),
            "{acme}"
        );
    }

    #[test]
    fn a_key_expiring_soon_shows_a_warning_until_the_version_changes() {
        let mut p = locked_down("");
        p.set_state(TenantState::Active);
        p.expiry_warned_version = "v1".into();
        p.key_expires_at_unix_ms = 86_400_000;
        let warned = page(vec![row("acme", p.clone(), Some(Duration::ZERO))]);
        let acme = row_of(&warned, "acme");
        assert!(acme.contains(">key expires <time datetime=\"1970-01-02T00:00:00.000Z\">"), "{acme}");
        p.key_version = "v2".into();
        let rolled = page(vec![row("acme", p, Some(Duration::ZERO))]);
        assert!(!rolled.contains("key expires"), "the warning was about v1: {rolled}");
    }

    #[test]
    fn every_string_from_outside_is_escaped() {
        let mut p = locked_down("<img src=x onerror=alert(1)>");
        p.key_version = "\"><script>alert('v')</script>&".into();
        let html = page(vec![row("acme", p, None)]);
        assert!(!html.contains("<img") && !html.contains("<script"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{html}");
        assert!(html.contains("&quot;&gt;&lt;script&gt;alert(&#39;v&#39;)&lt;/script&gt;&amp;"), "{html}");
        assert!(row_of(&html, "acme").contains("not measured"), "an unmeasured lag says so");
    }

    #[test]
    fn the_page_refreshes_itself_and_loads_nothing_else() {
        let html = page(vec![row("acme", TenantProjection::default(), Some(Duration::ZERO))]);
        assert!(html.contains(&format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">")));
        for external in ["src=", "href=", "<script", "<link"] {
            assert!(!html.contains(external), "{external} in {html}");
        }
        assert!(html.contains("<th scope=\"row\">acme</th>"));
    }

    #[test]
    fn the_page_shows_which_shards_the_worker_owns() {
        let html = page(Vec::new());
        assert!(html.contains("<dt>Shards owned</dt><dd>0, 3 <small>(of 4)</small></dd>"), "{html}");
        assert_eq!(ShardList::default().to_string(), "none");
    }

    #[test]
    fn the_page_shows_every_shard_s_owner_and_tenant_count() {
        let html = page(Vec::new());
        let row = |shard: u32| {
            let start = html.find(&format!("<tr data-shard=\"{shard}\">")).expect("the shard's row");
            &html[start..start + html[start..].find("</tr>").expect("the row ends")]
        };
        assert!(row(0).contains("<td>here:1 <small>(this worker)</small></td>"), "{}", row(0));
        assert!(row(1).contains("<td>&lt;b&gt;there&lt;/b&gt;:2</td>"), "an owner's name is escaped: {}", row(1));
        assert!(row(1).contains("<td class=\"num\">10</td>") && !row(1).contains("this worker"), "{}", row(1));
        assert!(row(2).contains("no owner"), "{}", row(2));
        assert!(row(3).contains("(this worker)") && row(3).contains("2026-12-07T01:00:00.000Z"), "{}", row(3));
    }

    #[test]
    fn a_worker_without_tenants_says_so() {
        let html = page(Vec::new());
        assert!(html.contains("No tenants yet"), "{html}");
        let tenants = &html[html.find("<h2 id=\"tenants\">").expect("the tenants section")..];
        assert!(!tenants.contains("<table"), "no empty tenant table: {tenants}");
        assert!(html.contains("<dd>0 <small>(0 active, 0 degraded, 0 locked down, 0 erased)</small></dd>"), "{html}");
    }
}
