//! The broker is not an admin channel: forwarded admin requests are
//! authenticated whether or not an admin token is set, bound to their
//! shard, refused when replayed, answered with signed answers only, served
//! concurrently, and a panic while serving one is a 500, not a dead inbox.
//! Real RabbitMQ, real workers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use bytes::Bytes;
use common::pair::{Pair, tenant_on};
use common::*;
use futures_util::StreamExt;
use keyseal::broker::lease_queue;
use keyseal::clock::SystemClock;
use keyseal::crypto::root_key::ManagedRootKeys;
use keyseal::fleet::forward::message::{ForwardedAnswer, ForwardedRequest, unpack_answer};
use keyseal::fleet::forward::{ForwardKey, Forwarder, InboxContext, serve_inbox};
use keyseal::placement::ShardId;
use keyseal::placement::shard_of;
use keyvault_emulator::{Fault, FaultAction};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// A client of the broker that talks to lease queues directly, as anyone
/// allowed to publish could: its own exclusive reply queue.
struct Impostor {
    channel: Channel,
    reply_queue: String,
    replies: Consumer,
}

impl Impostor {
    async fn connect(vhost: &Vhost) -> Self {
        let connection = keyseal::broker::connect(&vhost.amqp_url(), "impostor").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let reply_queue = channel.queue_declare("".into(), exclusive, FieldTable::default()).await.unwrap();
        let reply_queue = reply_queue.name().to_string();
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let replies = channel
            .basic_consume(reply_queue.as_str().into(), "".into(), options, FieldTable::default())
            .await
            .unwrap();
        std::mem::forget(connection);
        Self { channel, reply_queue, replies }
    }

    fn request(&self, shard: u32, uri: &str, id: &str) -> ForwardedRequest {
        let now = keyseal::clock::Clock::now_ms(&SystemClock);
        ForwardedRequest {
            shard: ShardId(shard),
            method: "GET".into(),
            uri: uri.into(),
            content_type: None,
            sent_at_ms: now,
            expires_at_ms: now + 30_000,
            id: id.into(),
            reply_to: self.reply_queue.clone(),
            body: Bytes::new(),
        }
    }

    async fn publish(&self, shard: u32, properties: BasicProperties) {
        let queue = lease_queue(shard);
        self.channel
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), b"", properties)
            .await
            .unwrap();
    }

    /// The next answer in the reply queue: (correlation id, status, body).
    async fn next_answer(&mut self, key: &ForwardKey) -> (String, StatusCode, Bytes) {
        let delivery = tokio::time::timeout(WAIT, self.replies.next()).await.expect("an answer").unwrap().unwrap();
        let id = delivery.properties.correlation_id().as_ref().unwrap().to_string();
        let answer = unpack_answer(&id, &delivery.properties, &delivery.data, key).expect("answers are signed");
        (id, answer.status, answer.body)
    }
}

/// The deployment's forwarding key, derived as its workers derive it.
fn deployment_key(data_dir: &std::path::Path) -> ForwardKey {
    let roots = ManagedRootKeys::load_or_create(&data_dir.join("root-keys")).unwrap();
    ForwardKey::derive(&roots, None).unwrap()
}

fn without_signature(properties: BasicProperties) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap();
    let kept: FieldTable = headers
        .inner()
        .iter()
        .filter(|(name, _)| name.as_str() != "x-keyseal-signature")
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    headers = kept;
    properties.with_headers(headers)
}

async fn refused(base: &str, reason: &str) -> f64 {
    scrape_sum(base, "keyseal_forwarded_requests_refused_total", &[("reason", reason)]).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_wrongly_signed_replayed_and_readdressed_requests_get_no_tenant_data() {
    let vhost = Vhost::new("fwd-auth");
    let dir = tempfile::tempdir().unwrap();
    // No admin token: the default, and the case the broker once bypassed.
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &["--shards", "2"]).await;
    let base = base_url(&worker);
    let tenant = "acme";
    let home = shard_of(tenant, 2).0;
    let records = keyseal::broker::publish::synthetic(tenant, "r-", 3, 64, 1);
    publish_confirmed(&vhost, &records).await;
    wait_for_records(&base, tenant, 3, WAIT).await;

    let key = deployment_key(dir.path());
    let mut impostor = Impostor::connect(&vhost).await;
    let uri = format!("/v1/tenants/{tenant}/records/{}", records[0].record_id);
    let before = refused(&base, "unauthorized").await;

    let unsigned = without_signature(impostor.request(home, &uri, "unsigned").properties(&key));
    impostor.publish(home, unsigned).await;
    let guessed = ForwardKey::from_secrets(b"a guess at the deployment's secret", None);
    impostor.publish(home, impostor.request(home, &uri, "wrong-key").properties(&guessed)).await;
    let readdressed = impostor.request(1 - home, &uri, "readdressed").properties(&key);
    impostor.publish(home, readdressed).await;
    wait_until("three refusals", WAIT, || async { refused(&base, "unauthorized").await >= before + 3.0 }).await;

    let genuine = impostor.request(home, &uri, "genuine").properties(&key);
    impostor.publish(home, genuine.clone()).await;
    impostor.publish(home, genuine).await;
    impostor.publish(home, impostor.request(home, &uri, "last").properties(&key)).await;

    // Only signed requests are answered: the genuine one, its replay
    // (refused), the last one, in whatever order they were served (they run
    // side by side). An answer to the refused ones would have been queued
    // before their refusals were counted, so ahead of these three.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (id, status, body) = impostor.next_answer(&key).await;
        let code = serde_json::from_slice::<Value>(&body).ok().map(|error| error["error"]["code"].clone());
        answers.push((id, status, if status == StatusCode::OK { Some(body) } else { None }, code));
    }
    answers.sort_by_key(|(id, status, ..)| (id.clone(), *status));
    let payload = Some(Bytes::from(records[0].payload.clone()));
    assert_eq!(answers[0].0, "genuine");
    assert_eq!((answers[0].1, &answers[0].2), (StatusCode::OK, &payload), "the genuine request is served");
    assert_eq!((answers[1].0.as_str(), answers[1].1), ("genuine", StatusCode::UNAUTHORIZED), "a replay is refused");
    assert_eq!(answers[1].3, Some(Value::from("replayed")));
    assert_eq!((answers[2].0.as_str(), answers[2].1), ("last", StatusCode::OK), "nothing answered the unsigned ones");
    assert_eq!(refused(&base, "replayed").await, 1.0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_not_signed_by_the_deployment_is_refused() {
    let vhost = Vhost::new("fwd-forged");
    let dir = tempfile::tempdir().unwrap();
    let tenant = tenant_on(1, "victim");
    // A squatter holds shard 1's lease before any worker starts.
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "squatter").await.unwrap();
    keyseal::broker::declare_topology(&connection, None).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    channel.queue_declare(lease_queue(1).as_str().into(), exclusive, FieldTable::default()).await.unwrap();
    let mut requests = channel
        .basic_consume(lease_queue(1).as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &["--shards", "2"]).await;
    assert_eq!(worker.owned.ids(), vec![ShardId(0)], "the worker leaves the squatted shard alone");
    let base = base_url(&worker);

    let squatter = tokio::spawn(async move {
        for forged_key in [None, Some(ForwardKey::from_secrets(b"squatter", None))] {
            // Balancers probe whether a lease is held with empty messages: skip them.
            let request = loop {
                let delivery = requests.next().await.unwrap().unwrap();
                if delivery.properties.correlation_id().is_some() {
                    break delivery;
                }
            };
            let id = request.properties.correlation_id().as_ref().unwrap().to_string();
            let reply_to = request.properties.reply_to().as_ref().unwrap().to_string();
            let forged = ForwardedAnswer {
                id,
                status: StatusCode::OK,
                content_type: Some("application/json".into()),
                retry_after: None,
                body: Bytes::from_static(br#"{"tenant":"forged","state":"active"}"#),
            };
            let properties = match &forged_key {
                Some(key) => forged.properties(key),
                None => BasicProperties::default().with_correlation_id(forged.id.as_str().into()),
            };
            channel
                .basic_publish("".into(), reply_to.as_str().into(), Default::default(), &forged.body, properties)
                .await
                .unwrap();
        }
    });
    for _ in 0..2 {
        let response = reqwest::get(format!("{base}/v1/tenants/{tenant}")).await.unwrap();
        assert_eq!(response.status(), 502);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "forged_answer", "{error}");
    }
    squatter.await.unwrap();
    worker.stop().await;
}

/// A handler with a bug: it indexes past the end of its data.
async fn buggy_handler() -> String {
    let data = std::hint::black_box(vec!["only one"]);
    data[std::hint::black_box(3)].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_serving_a_forwarded_request_is_a_500_and_the_inbox_goes_on() {
    let vhost = Vhost::new("fwd-panic");
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "owner").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    channel.queue_declare(lease_queue(0).as_str().into(), exclusive, FieldTable::default()).await.unwrap();
    channel.basic_qos(8, BasicQosOptions::default()).await.unwrap();
    let inbox = channel
        .basic_consume(lease_queue(0).as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let router = Router::new()
        .route("/v1/panic", get(buggy_handler))
        .route("/v1/ok", get(|| async { "still here" }))
        .layer(axum::middleware::from_fn(keyseal::admin::middleware::contain_panics));
    let key = ForwardKey::from_secrets(b"test deployment", None);
    let context = InboxContext { router, key: key.clone(), replays: Arc::default() };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(serve_inbox(ShardId(0), channel, inbox, context, stop.clone()));
    let panics = || {
        let text = keyseal::telemetry::metrics::handle().render();
        metric_sum(&text, "keyseal_request_panics_total", &[("via", "forwarded")]).expect("the counter exists")
    };
    let before = panics();

    let broker = keyseal::broker::Broker::from_list(&vhost.amqp_url()).unwrap();
    let forwarder = Forwarder::new(&broker, key, Duration::from_secs(10));
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let answer = forwarder.forward(ShardId(0), get("/v1/panic")).await.unwrap();
    assert_eq!(answer.status(), 500);
    let body = axum::body::to_bytes(answer.into_body(), 4096).await.unwrap();
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "internal_error");
    assert!(!error.to_string().contains("index out of bounds"), "the panic's text stays in the log");
    assert_eq!(panics(), before + 1.0);
    for _ in 0..3 {
        let answer = forwarder.forward(ShardId(0), get("/v1/ok")).await.unwrap();
        assert_eq!(answer.status(), 200, "the inbox serves on after the panic");
    }
    stop.cancel();
    serving.await.unwrap();
    forwarder.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_past_9999_never_kill_an_owner_or_its_inbox() {
    let pair = Pair::start("fwd-far-future", &["--probe-interval", "100ms"]).await;
    let tenant = tenant_on(0, "far");
    // A key that expires in the year 11000 (Key Vault takes any `exp`; the
    // SDK's model cannot hold it, which once made the key look unreachable).
    let far_exp: i64 = 284_012_524_800;
    pair.vault
        .create("far-key", serde_json::json!({"kty": "RSA", "key_size": 2048, "attributes": {"exp": far_exp}}))
        .await;
    let [owner, other] = pair.both(&tenant);
    let (code, answer) = pair.enable(&other, &tenant, &pair.vault.key_uri("far-key")).await;
    assert_eq!(code, 200, "{answer}");

    // A record observed at i64::MAX is refused at the door.
    let mut record = keyseal::broker::publish::synthetic(&tenant, "max-", 1, 16, 1).remove(0);
    record.observed_at_unix_ms = i64::MAX;
    let fine = keyseal::broker::publish::synthetic(&tenant, "fine-", 2, 16, 1);
    publish_confirmed(&pair.vhost, &[vec![record], fine.clone()].concat()).await;
    let connection = keyseal::broker::connect(&pair.vhost.amqp_url(), "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let dead = next_dead_letter(&channel, WAIT).await.expect("a dead letter");
    assert_eq!(reason(&dead), "invalid_observed_at");
    wait_for_records(&owner, &tenant, 2, WAIT).await;

    pair.wait_for_status(&tenant, "probed", |s| s["keyHealth"]["expiresAt"].is_string()).await;
    for _ in 0..2 {
        for base in [&owner, &other] {
            let (code, status) = pair.status(base, &tenant).await;
            assert_eq!(code, 200, "{status}");
            let expires = status["keyHealth"]["expiresAt"].as_str().unwrap_or_default();
            assert!(expires.starts_with("9999-12-31T23:59:59"), "shown as the last time RFC 3339 has: {status}");
            let listing = pair.http.get(format!("{base}/v1/tenants/{tenant}/records")).send().await.unwrap();
            assert_eq!(listing.status(), 200);
            let listing: Value = listing.json().await.unwrap();
            assert_eq!(listing["records"].as_array().unwrap().len(), 2, "{listing}");
        }
    }
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_vault_for_one_tenant_does_not_hold_up_another_tenants_forwarded_requests() {
    let pair = Pair::start("fwd-slow", &["--vault-timeout", "20s", "--vault-retry-budget", "0s"]).await;
    let slow = tenant_on(0, "slow");
    let quick = tenant_on(0, "quick");
    let [owner, other] = pair.both(&slow);
    pair.vault.create_rsa("slow-key").await;
    assert_eq!(pair.enable(&owner, &slow, &pair.vault.key_uri("slow-key")).await.0, 200);
    let records = keyseal::broker::publish::synthetic(&slow, "s-", 3, 64, 1);
    let others = keyseal::broker::publish::synthetic(&quick, "q-", 3, 64, 1);
    publish_confirmed(&pair.vhost, &[records.clone(), others].concat()).await;
    wait_for_records(&owner, &slow, 3, WAIT).await;
    wait_for_records(&owner, &quick, 3, WAIT).await;
    pair.clock.advance(Duration::from_secs(49 * 3600));
    let sweep: Value = pair.http.post(format!("{owner}/v1/sweeps?shard=0")).send().await.unwrap().json().await.unwrap();
    assert_eq!(sweep["seal"]["sealed"], 6, "{sweep}");

    // Reading a sealed record now needs the vault, which hangs.
    pair.shard_of(&slow).shard.keyring.forget_cached();
    pair.vault.emulator.set_faults(vec![Fault {
        key: Some("slow-key".into()),
        operation: Some("unwrapkey".into()),
        action: FaultAction::Hang,
    }]);
    let hanging = {
        let url = format!("{other}/v1/tenants/{slow}/records/{}", records[0].record_id);
        tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) })
    };
    wait_until("the slow read to reach the vault", WAIT, || async {
        pair.vault.emulator.calls().get("faulted").copied().unwrap_or(0) > 0
    })
    .await;
    let started = std::time::Instant::now();
    let (code, status) = pair.status(&other, &quick).await;
    assert_eq!(code, 200, "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "another tenant's forwarded request waited {:?} behind the hanging one",
        started.elapsed()
    );
    assert!(!hanging.is_finished(), "the slow read is still waiting on the vault");
    pair.vault.emulator.clear_faults();
    hanging.await.unwrap().unwrap();
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_type_no_amqp_header_can_carry_is_refused_and_the_forwarder_goes_on() {
    let pair = Pair::start("fwd-content-type", &[]).await;
    let tenant = tenant_on(1, "ct");
    let (owner, other) = pair.owner_and_other(&tenant);
    publish_confirmed(&pair.vhost, &keyseal::broker::publish::synthetic(&tenant, "r-", 1, 8, 1)).await;
    wait_for_records(&owner, &tenant, 1, WAIT).await;
    let long = format!("application/json; note={}", "x".repeat(300));
    let response = pair
        .http
        .put(format!("{other}/v1/tenants/{tenant}/retention"))
        .header("content-type", long)
        .body(r#"{"maxAge":"400d"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_request", "{error}");
    for _ in 0..3 {
        assert_eq!(pair.status(&other, &tenant).await.0, 200, "forwarding goes on");
    }
    pair.stop().await;
}

/// Messages (ready and unacknowledged) in queue `queue` of `vhost`.
fn messages_in(vhost: &Vhost, queue: &str) -> Option<u64> {
    let listed = rabbitmqctl(&["list_queues", "-p", &vhost.name, "name", "messages", "--formatter", "json"]);
    let queues: Vec<Value> = serde_json::from_str(&listed).expect("rabbitmqctl's JSON");
    queues.iter().find(|q| q["name"] == queue).and_then(|q| q["messages"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_probe_reaching_an_owner_is_acked_and_not_counted_as_a_refused_request() {
    let vhost = Vhost::new("fwd-probe");
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(&vhost, dir.path(), Arc::new(SystemClock), &[]).await;
    let base = base_url(&worker);
    let connection = keyseal::broker::connect(&vhost.amqp_url(), "prober").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let queue = lease_queue(0);
    wait_until("shard 0 owned", WAIT, || async { messages_in(&vhost, &queue).is_some() }).await;
    let send = |properties: BasicProperties, body: &'static [u8]| {
        let channel = channel.clone();
        let queue = queue.clone();
        async move {
            let options = BasicPublishOptions::default();
            let confirm = channel.basic_publish("".into(), queue.as_str().into(), options, body, properties);
            assert!(confirm.await.unwrap().await.unwrap().is_ack());
        }
    };

    // Something that is no request is refused and counted: the count is read
    // under the label it really has.
    send(BasicProperties::default(), b"not a request").await;
    wait_until("the refusal counted", WAIT, || async { refused(&base, "malformed_forward").await == 1.0 }).await;

    // A probe as workers send them (but kept until delivered, so it surely
    // reaches the inbox): acked, and no refusal of any reason counted.
    send(BasicProperties::default().with_type(keyseal::broker::PROBE_TYPE.into()), b"").await;
    wait_until("the probe acked", WAIT, || async { messages_in(&vhost, &queue) == Some(0) }).await;
    let total = scrape_sum(&base, "keyseal_forwarded_requests_refused_total", &[]).await;
    assert_eq!(total, Some(1.0), "only the request that was no request counts as refused");
    keyseal::broker::close(&connection, "probed").await;
    worker.stop().await;
}
