//! `weir module push` and `weir fleet status`: from a laptop or a CI job,
//! straight to the broker the gateways use, no cloud service in between.
//!
//! A push publishes the bundle retained (in pieces when it is larger than
//! `--chunk-size`), then reads the gateways' retained status messages
//! until each target has a terminal result for this bundle. With
//! `--canary N` it first pushes to N gateways of the group one by one
//! (their own topics), waits for their results and probation, and only
//! then to the whole group.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Failure;
use crate::common::tls::TlsFiles;
use crate::deploy::bundle::{Bundle, authorise_rollback, push_id};
use crate::deploy::envelope::{piece_topic, split};
use crate::deploy::keys;
use crate::deploy::ledger::TRANSIENT;

/// How to reach the broker.
#[derive(Args, Clone)]
pub struct BrokerArgs {
    /// The broker, HOST:PORT.
    #[arg(long)]
    broker: String,
    /// CA file to verify the broker with (turns TLS on).
    #[arg(long)]
    tls_ca: Option<String>,
    /// Client certificate, for mutual TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<String>,
    /// The client certificate's key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<String>,
    /// User name.
    #[arg(long)]
    username: Option<String>,
    /// Password (better: the environment variable).
    #[arg(long, env = "WEIR_PUSH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Topic prefix, as the gateways' `[modules] prefix`.
    #[arg(long, default_value = "weir")]
    prefix: String,
}

/// Arguments of `weir module push`.
#[derive(Args)]
pub struct PushArgs {
    /// The bundle (from `weir module pack`).
    file: PathBuf,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Push to this gateway.
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    gateway: Option<String>,
    /// Push to this fleet group.
    #[arg(long)]
    group: Option<String>,
    /// Seconds to wait for every result.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// An intentional downgrade: authorised with --key, taken only by
    /// gateways with `allow_rollback = true`.
    #[arg(long, requires = "key")]
    rollback: bool,
    /// The secret key that authorises a rollback.
    #[arg(long)]
    key: Option<PathBuf>,
    /// With --group: first push to this many of its online gateways.
    #[arg(long, requires = "group")]
    canary: Option<usize>,
    /// With --canary: stop the rollout if more canaries than this fail.
    #[arg(long, default_value_t = 0)]
    max_failures: usize,
    /// Largest piece of the bundle per message (brokers cap message size:
    /// 128 KB on AWS IoT Core).
    #[arg(long, default_value = "96 KiB")]
    chunk_size: crate::common::ByteSize,
}

/// Arguments of `weir fleet status`.
#[derive(Args)]
pub struct FleetArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Only this group's gateways.
    #[arg(long)]
    group: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A connection: its client and what comes in.
struct Conn {
    client: AsyncClient,
    statuses: mpsc::UnboundedReceiver<(String, Value)>,
    acks: mpsc::UnboundedReceiver<()>,
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(b: &BrokerArgs, what: &str) -> Result<Conn, Failure> {
    let (host, port) = b
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
        .ok_or_else(|| Failure::refused(anyhow::anyhow!("--broker must be HOST:PORT")))?;
    let id = format!(
        "weir-{what}-{}-{}",
        std::process::id(),
        crate::record::now_ms() % 100_000
    );
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 8 << 20);
    if let Some(u) = &b.username {
        opts.set_credentials(u.clone(), b.password.clone().unwrap_or_default());
    }
    if let Some(ca) = &b.tls_ca {
        let files = TlsFiles {
            ca: ca.clone(),
            cert: b.tls_cert.clone(),
            key: b.tls_key.clone(),
        };
        opts.set_transport(crate::common::tls::transport(&files).map_err(Failure::refused)?);
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    let (stx, statuses) = mpsc::unbounded_channel();
    let (atx, acks) = mpsc::unbounded_channel();
    let (ctx, mut connected) = mpsc::unbounded_channel();
    let prefix = b.prefix.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ctx.send(Ok(()));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let gw = p
                        .topic
                        .strip_prefix(&format!("{prefix}/"))
                        .and_then(|r| r.strip_suffix("/status"))
                        .unwrap_or("")
                        .to_string();
                    if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                        let _ = stx.send((gw, v));
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = atx.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = ctx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(10), connected.recv()).await {
        Ok(Some(Ok(()))) => {}
        Ok(Some(Err(e))) => {
            return Err(anyhow::anyhow!("cannot reach the broker {}: {e}", b.broker).into());
        }
        _ => return Err(anyhow::anyhow!("no answer from the broker {} in 10 s", b.broker).into()),
    }
    client
        .subscribe(format!("{}/+/status", b.prefix), QoS::AtLeastOnce)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Conn {
        client,
        statuses,
        acks,
    })
}

/// The gateways' statuses: the retained ones, until `quiet` passes with
/// nothing new (at most `most`).
async fn gather(
    conn: &mut Conn,
    seen: &mut BTreeMap<String, Value>,
    quiet: Duration,
    most: Duration,
) {
    let end = Instant::now() + most;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(quiet.min(left), conn.statuses.recv()).await {
            Ok(Some((gw, v))) if !gw.is_empty() => {
                seen.insert(gw, v);
            }
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

fn online(v: &Value) -> bool {
    v["state"] == "online"
}

fn in_group(v: &Value, g: &str) -> bool {
    v["groups"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == g))
}

/// This push's result in a gateway's status, if it has one.
fn result_of<'a>(v: &'a Value, module: &str, push: &str) -> Option<&'a Value> {
    v["pushed"][module]["results"]
        .as_array()?
        .iter()
        .rev()
        .find(|r| r["push"] == push)
}

/// Publish the pieces of `bytes` to `base` and wait for the broker to take
/// each. Retained, so a gateway that is offline gets it when it returns;
/// a rollback is not: it goes to the gateways online now, and an old
/// authorisation is never replayed to one that reconnects.
async fn publish(
    conn: &mut Conn,
    base: &str,
    bytes: &[u8],
    chunk: usize,
    rollback: Option<([u8; 32], [u8; 64])>,
) -> Result<usize, Failure> {
    let pieces = split(bytes, chunk, rollback);
    // Piece 0 last: a gateway that sees it holds every other piece already.
    for p in pieces.iter().rev() {
        conn.client
            .publish(
                piece_topic(base, p.index),
                QoS::AtLeastOnce,
                rollback.is_none(),
                p.encode(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for _ in 0..pieces.len() {
        tokio::time::timeout(Duration::from_secs(30), conn.acks.recv())
            .await
            .map_err(|_| anyhow::anyhow!("the broker did not take the bundle within 30 s (is it over its message size limit? try a smaller --chunk-size)"))?;
    }
    Ok(pieces.len())
}

/// The results a push waits for.
struct Wanted<'a> {
    module: &'a str,
    bundle: &'a str,
    push: &'a str,
    /// Per gateway, a transient refusal of this push from before it was
    /// sent (`at_ms`): not its answer, since the push is judged anew.
    stale: BTreeMap<String, u64>,
}

impl<'a> Wanted<'a> {
    fn new(
        module: &'a str,
        bundle: &'a str,
        push: &'a str,
        seen: &BTreeMap<String, Value>,
    ) -> Self {
        let stale = seen
            .iter()
            .filter_map(|(gw, v)| {
                let r = result_of(v, module, push)?;
                let code = r["code"].as_str()?;
                TRANSIENT
                    .contains(&code)
                    .then(|| Some((gw.clone(), r["at_ms"].as_u64()?)))?
            })
            .collect();
        Wanted {
            module,
            bundle,
            push,
            stale,
        }
    }

    /// Gateway `gw`'s answer to this push in its status `v`, if it has one.
    fn answer<'v>(&self, gw: &str, v: &'v Value) -> Option<&'v Value> {
        let r = result_of(v, self.module, self.push)?;
        let old = self
            .stale
            .get(gw)
            .is_some_and(|t| r["at_ms"].as_u64() == Some(*t));
        (!old).then_some(r)
    }
}

/// Wait until every gateway of `targets` has answered `want`, or the
/// deadline. Prints each as it comes. Returns the results by gateway.
async fn results(
    conn: &mut Conn,
    seen: &mut BTreeMap<String, Value>,
    targets: &[String],
    want: &Wanted<'_>,
    deadline: Instant,
    began: Instant,
) -> BTreeMap<String, Value> {
    let (module, bundle) = (want.module, want.bundle);
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    loop {
        for gw in targets {
            if out.contains_key(gw) {
                continue;
            }
            if let Some(v) = seen.get(gw)
                && let Some(r) = want.answer(gw, v)
            {
                let mut r = r.clone();
                // Applied once, and replaced since: not what runs now.
                let active = &v["pushed"][module]["active"];
                if r["outcome"] == "applied" && active["sha256"] != bundle {
                    let now = active["version"].as_str().unwrap_or("the config's module");
                    r["outcome"] = "superseded".into();
                    r["code"] = "superseded".into();
                    r["reason"] = format!("it was applied before; {now} runs now (push a newer version, or --rollback to go back)").into();
                }
                let r = &r;
                let outcome = r["outcome"].as_str().unwrap_or("?");
                let version = r["version"].as_str().unwrap_or("?");
                let prev = r["previous"].as_str().unwrap_or("the config's module");
                let t = began.elapsed().as_secs_f64();
                match outcome {
                    "applied" => {
                        println!("{gw}: applied {module} {version} (was {prev}) after {t:.1} s")
                    }
                    _ => println!(
                        "{gw}: {outcome} ({}): {} (running: {prev}) after {t:.1} s",
                        r["code"].as_str().unwrap_or(""),
                        r["reason"].as_str().unwrap_or("")
                    ),
                }
                out.insert(gw.clone(), r.clone());
            }
        }
        if out.len() == targets.len() {
            return out;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        match tokio::time::timeout(left, conn.statuses.recv()).await {
            Ok(Some((gw, v))) if !gw.is_empty() => {
                seen.insert(gw, v);
            }
            Ok(Some(_)) => {}
            _ => return out,
        }
    }
}

/// `weir module push`.
pub(super) fn push(args: PushArgs) -> Result<(), Failure> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let b = Bundle::open_untrusted(&bytes)
        .map_err(|e| Failure::refused(anyhow::anyhow!("{}: {e}", args.file.display())))?;
    let rollback = match (&args.key, args.rollback) {
        (Some(k), true) => Some(authorise_rollback(
            &bytes,
            &keys::read_secret(k).map_err(anyhow::Error::msg)?,
        )),
        _ => None,
    };
    let module = b.manifest.name.clone();
    let push = push_id(&b.sha256, rollback.as_ref().map(|(_, sig)| sig));
    let chunk = (args.chunk_size.0 as usize).max(1024);
    runtime()?.block_on(async move {
        let mut conn = connect(&args.broker, "push").await?;
        let mut seen = BTreeMap::new();
        gather(&mut conn, &mut seen, Duration::from_millis(700), Duration::from_secs(5)).await;
        let want = Wanted::new(&module, &b.sha256, &push, &seen);
        let began = Instant::now();
        let deadline = began + Duration::from_secs(args.wait);
        let p = &args.broker.prefix;
        let mut failed = 0usize;
        let mut all: BTreeMap<String, Value> = BTreeMap::new();
        let targets: Vec<String> = match (&args.gateway, &args.group) {
            (Some(gw), _) => {
                let n = publish(&mut conn, &format!("{p}/{gw}/modules/{module}"), &bytes, chunk, rollback).await?;
                println!("pushed {module} {} ({} bytes, {n} piece(s)) to gateway {gw}; waiting up to {} s", b.manifest.version, bytes.len(), args.wait);
                vec![gw.clone()]
            }
            (None, Some(group)) => {
                let members: Vec<String> = seen.iter().filter(|(_, v)| in_group(v, group)).map(|(k, _)| k.clone()).collect();
                let up: Vec<String> = members.iter().filter(|g| online(&seen[*g])).cloned().collect();
                for g in members.iter().filter(|g| !up.contains(g)) {
                    println!("{g}: offline; it gets the push from the retained message when it returns");
                }
                if up.is_empty() {
                    println!("no gateway of group {group} is online");
                }
                if let Some(n) = args.canary {
                    let canaries: Vec<String> = up.iter().take(n).cloned().collect();
                    for gw in &canaries {
                        publish(&mut conn, &format!("{p}/{gw}/modules/{module}"), &bytes, chunk, rollback).await?;
                    }
                    println!("canary: pushed {module} {} to {} gateway(s) of {group}: {}", b.manifest.version, canaries.len(), canaries.join(" "));
                    let r = results(&mut conn, &mut seen, &canaries, &want, deadline, began).await;
                    let bad = canaries.iter().filter(|g| r.get(*g).is_none_or(|x| x["outcome"] != "applied")).count();
                    if bad > args.max_failures {
                        for g in canaries.iter().filter(|g| !r.contains_key(*g)) {
                            println!("{g}: no result within {} s", args.wait);
                        }
                        eprintln!("error: canary: {bad} of {} failed (at most {} may): the rollout stops here; group {group} was not pushed to", canaries.len(), args.max_failures);
                        return Err(Failure::quiet(1));
                    }
                    println!("canary: {} of {} applied; rolling out to group {group}", canaries.len() - bad, canaries.len());
                    failed += bad;
                    all.extend(r);
                }
                let n = publish(&mut conn, &format!("{p}/fleet/{group}/modules/{module}"), &bytes, chunk, rollback).await?;
                println!("pushed {module} {} ({} bytes, {n} piece(s)) to group {group} ({} online); waiting up to {} s", b.manifest.version, bytes.len(), up.len(), args.wait);
                up.into_iter().filter(|g| !all.contains_key(g)).collect()
            }
            (None, None) => unreachable!("clap requires one"),
        };
        let r = results(&mut conn, &mut seen, &targets, &want, deadline, began).await;
        for g in targets.iter().filter(|g| !r.contains_key(*g)) {
            println!("{g}: no result within {} s (is it online? brokers drop messages over their size limit without a word: a smaller --chunk-size helps)", args.wait);
            failed += 1;
        }
        failed += r.values().filter(|x| x["outcome"] != "applied").count();
        all.extend(r);
        let applied = all.values().filter(|x| x["outcome"] == "applied").count();
        println!("{applied} applied, {failed} not, in {:.1} s", began.elapsed().as_secs_f64());
        let _ = conn.client.disconnect().await;
        if failed > 0 {
            return Err(Failure::quiet(1));
        }
        Ok(())
    })
}

/// `weir fleet status`.
pub(super) fn fleet(args: FleetArgs) -> Result<(), Failure> {
    runtime()?.block_on(async move {
        let mut conn = connect(&args.broker, "fleet").await?;
        let mut seen = BTreeMap::new();
        gather(&mut conn, &mut seen, Duration::from_millis(700), Duration::from_secs(10)).await;
        let _ = conn.client.disconnect().await;
        let rows: Vec<(&String, &Value)> = seen
            .iter()
            .filter(|(_, v)| args.group.as_ref().is_none_or(|g| in_group(v, g)))
            .collect();
        if args.json {
            let v: Vec<Value> = rows
                .iter()
                .map(|(gw, v)| json!({"gateway": gw, "state": v["state"], "groups": v["groups"], "pushed": v["pushed"], "modules": v["modules"]}))
                .collect();
            println!("{}", Value::Array(v));
            return Ok(());
        }
        if rows.is_empty() {
            println!("no gateway status under {}/+/status", args.broker.prefix);
            return Ok(());
        }
        println!("{:<20} {:<8} {:<16} {:<34} LAST RESULT", "GATEWAY", "STATE", "GROUPS", "MODULES");
        for (gw, v) in rows {
            let groups = v["groups"].as_array().map_or(String::new(), |a| {
                a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
            });
            let (mut mods, mut last) = (Vec::new(), String::from("-"));
            let mut newest = 0u64;
            if let Some(p) = v["pushed"].as_object() {
                for (name, m) in p {
                    let ver = m["active"]["version"].as_str().unwrap_or("config");
                    let prob = if m["on_probation"] == true { " (probation)" } else { "" };
                    mods.push(format!("{name} {ver}{prob}"));
                    if let Some(r) = m["results"].as_array().and_then(|a| a.last()) {
                        let at = r["at_ms"].as_u64().unwrap_or(0);
                        if at >= newest {
                            newest = at;
                            last = format!(
                                "{name} {} {}{}",
                                r["version"].as_str().unwrap_or("?"),
                                r["outcome"].as_str().unwrap_or("?"),
                                match r["outcome"].as_str() {
                                    Some("applied") | None => String::new(),
                                    _ => format!(": {}", r["reason"].as_str().unwrap_or("")),
                                }
                            );
                        }
                    }
                }
            }
            println!(
                "{:<20} {:<8} {:<16} {:<34} {}",
                gw,
                v["state"].as_str().unwrap_or("?"),
                if groups.is_empty() { "-" } else { &groups },
                if mods.is_empty() { "-".to_string() } else { mods.join(" ") },
                last
            );
        }
        Ok(())
    })
}
