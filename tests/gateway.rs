//! The gateway client against the built-in sandbox, in-process, in both reply formats: every
//! outcome class, the paid rule, the transport rules, and secrets that never leak.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use recurrentd::config::ResponseFormat;
use recurrentd::gateway::client::{ChargeReply, ChargeRequest, Client, Settings, StatusQuery};
use recurrentd::gateway::outcome::{Decline, DeclineKind, Outcome};
use recurrentd::gateway::sandbox::{DuplicatePolicy, Sandbox, SandboxConfig};
use recurrentd::gateway::signature::SigningKey;
use recurrentd::money::{Currency, Money};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "pw-Zq8#unique-password";
const SALT: &str = "salt-Xk2!unique-salt";

fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        password: SecretString::from(PASSWORD),
        salt: SecretString::from(SALT),
        hang: Duration::from_millis(2500),
        ..SandboxConfig::builtin()
    }
}

fn settings(url: &str, format: ResponseFormat) -> Settings {
    Settings {
        url: url.to_string(),
        merchant_id: "123456".into(),
        login: "sandbox".into(),
        password: SecretString::from(PASSWORD),
        salt: SecretString::from(SALT),
        test_mode: true,
        format,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
    }
}

async fn start(config: SandboxConfig) -> Sandbox {
    Sandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn rub(amount: &str) -> (Money, Currency) {
    (
        Money::parse(amount).unwrap(),
        Currency::parse("RUB").unwrap(),
    )
}

/// A charge and then status queries, as the engine will make them.
struct Probe<'a> {
    client: &'a Client,
    bill: String,
    order: String,
    amount: Money,
    currency: Currency,
    sent_at: chrono::DateTime<Utc>,
    reply: Option<ChargeReply>,
}

impl<'a> Probe<'a> {
    fn new(client: &'a Client, bill: &str, order: &str) -> Probe<'a> {
        let (amount, currency) = rub("499.00");
        Probe {
            client,
            bill: bill.into(),
            order: order.into(),
            amount,
            currency,
            sent_at: Utc::now(),
            reply: None,
        }
    }

    async fn charge(&mut self) -> Outcome {
        self.sent_at = Utc::now();
        let reply = self
            .client
            .charge(&ChargeRequest {
                bill_number: &self.bill,
                order_number: &self.order,
                amount: self.amount,
                currency: self.currency,
                comment: Some("test"),
            })
            .await;
        let claim = reply.claim.clone();
        self.reply = Some(reply);
        claim
    }

    async fn status(&self) -> Outcome {
        self.status_answer().await.outcome().clone()
    }

    async fn status_answer(&self) -> recurrentd::gateway::client::StatusAnswer {
        self.client
            .order_status(&StatusQuery {
                order_number: &self.order,
                amount: self.amount,
                currency: self.currency,
                sent_at: self.sent_at,
                known_test_mode: self.reply.as_ref().and_then(|r| r.test_mode),
            })
            .await
    }
}

fn is_decline(outcome: &Outcome, kind: DeclineKind, code: &str) -> bool {
    matches!(outcome, Outcome::Declined(Decline { kind: k, code: c, .. }) if *k == kind && c == code)
}

/// Every magic bill number, charged and then confirmed, in one format.
async fn every_outcome_class(format: ResponseFormat) {
    let sandbox = start(sandbox_config()).await;
    let client = Client::new(settings(&sandbox.url(), format)).unwrap();
    let tag = format!("{format:?}");

    // Approved, confirmed by a verified status answer.
    let mut p = Probe::new(&client, "511111100000001", &format!("{tag}-ok"));
    assert_eq!(p.charge().await, Outcome::Approved);
    let answer = p.status_answer().await;
    assert_eq!(answer.outcome(), &Outcome::Approved);
    assert!(answer.verified.checkvalue_verified);
    assert_eq!(answer.verified.test_mode, Some(true));

    // Declines: the kind comes through both the claim and the confirmation.
    for (bill, kind, code) in [
        ("999000000000102", DeclineKind::Soft, "AS102"),
        ("999000000000105", DeclineKind::Soft, "AS105"),
        ("999000000000101", DeclineKind::Hard, "AS101"),
        ("999000000000104", DeclineKind::Hard, "AS104"),
        ("999000000000110", DeclineKind::Hard, "AS110"),
        ("999000000000400", DeclineKind::Hard, "AS400"),
    ] {
        let mut p = Probe::new(&client, bill, &format!("{tag}-{bill}"));
        let claim = p.charge().await;
        assert!(is_decline(&claim, kind, code), "{bill}: {claim}");
        let confirmed = p.status().await;
        assert!(is_decline(&confirmed, kind, code), "{bill}: {confirmed}");
    }

    // In Process that settles later, either way.
    let mut p = Probe::new(&client, "999000000000300", &format!("{tag}-300"));
    assert_eq!(p.charge().await, Outcome::Pending);
    assert_eq!(p.status().await, Outcome::Pending);
    assert_eq!(p.status().await, Outcome::Pending);
    assert_eq!(p.status().await, Outcome::Approved);
    let mut p = Probe::new(&client, "999000000000301", &format!("{tag}-301"));
    assert_eq!(p.charge().await, Outcome::Pending);
    p.status().await;
    p.status().await;
    assert!(matches!(p.status().await, Outcome::Declined(_)));

    // Unknown outcomes whose charge was applied: a status query finds the payment.
    for bill in [
        "999000000000408", // timeout after the charge was applied
        "999000000000409", // connection lost
        "999000000000500", // HTTP 500
        "999000000000666", // garbage
        "999000000000998", // AS998
    ] {
        let mut p = Probe::new(&client, bill, &format!("{tag}-{bill}"));
        let claim = p.charge().await;
        assert!(matches!(claim, Outcome::Unknown(_)), "{bill}: {claim}");
        assert_eq!(p.status().await, Outcome::Approved, "{bill}");
    }

    // 503: unknown to the client, and the gateway never filed it.
    let mut p = Probe::new(&client, "999000000000503", &format!("{tag}-503"));
    assert!(matches!(p.charge().await, Outcome::Unknown(m) if m.contains("503")));
    assert_eq!(p.status().await, Outcome::NotFound);

    // HTTP 429.
    let mut p = Probe::new(&client, "999000000000429", &format!("{tag}-429"));
    assert_eq!(p.charge().await, Outcome::RateLimited);

    // A wrong checkvalue is never paid, and never declined.
    let mut p = Probe::new(&client, "999000000000777", &format!("{tag}-777"));
    p.charge().await;
    assert!(matches!(p.status().await, Outcome::IntegrityFailure(m) if m.contains("checkvalue")));

    // A reply about another order.
    let mut p = Probe::new(&client, "999000000000888", &format!("{tag}-888"));
    assert!(matches!(p.charge().await, Outcome::IntegrityFailure(_)));
    assert!(matches!(p.status().await, Outcome::IntegrityFailure(_)));

    // A reused order number is refused (11/201): unknown, never a new charge.
    let mut p = Probe::new(&client, "511111100000001", &format!("{tag}-ok"));
    assert!(matches!(p.charge().await, Outcome::Unknown(m) if m.contains("earlier request")));

    // Outside the agreement's limits at the gateway: a decline.
    sandbox.add_agreement(
        "511111100000002",
        Currency::parse("RUB").unwrap(),
        Some(Money::parse("10.00").unwrap()),
        Some(Money::parse("100.00").unwrap()),
    );
    let mut p = Probe::new(&client, "511111100000002", &format!("{tag}-limits"));
    assert!(matches!(p.charge().await, Outcome::Declined(_)));

    // Wrong credentials: our configuration is wrong.
    let mut wrong = settings(&sandbox.url(), format);
    wrong.password = SecretString::from("not-the-password");
    let wrong = Client::new(wrong).unwrap();
    let mut p = Probe::new(&wrong, "511111100000001", &format!("{tag}-auth"));
    assert!(matches!(p.charge().await, Outcome::Rejected(m) if m.contains("gateway.login")));
    assert!(matches!(p.status().await, Outcome::Rejected(_)));

    // Test mode that disagrees with config: paid at the gateway but not money.
    let mut live = settings(&sandbox.url(), format);
    live.test_mode = false;
    let live = Client::new(live).unwrap();
    let mut p = Probe::new(&live, "511111100000001", &format!("{tag}-mode"));
    assert!(matches!(p.charge().await, Outcome::IntegrityFailure(m) if m.contains("test")));
    p.reply = None;
    assert!(matches!(p.status().await, Outcome::IntegrityFailure(m) if m.contains("test")));

    // The sandbox's book agrees with what the client concluded.
    let book = sandbox.book();
    let approved = |order: &str| {
        book.orders
            .iter()
            .filter(|o| o.order_number == order && o.state.as_str() == "Approved")
            .count()
    };
    assert_eq!(approved(&format!("{tag}-ok")), 1);
    assert_eq!(approved(&format!("{tag}-999000000000408")), 1);
    assert_eq!(approved(&format!("{tag}-999000000000503")), 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn every_outcome_class_in_xml() {
    capture();
    every_outcome_class(ResponseFormat::Xml).await;
}

#[tokio::test]
async fn every_outcome_class_in_json() {
    capture();
    every_outcome_class(ResponseFormat::Json).await;
}

#[tokio::test]
async fn a_refused_connection_is_not_sent() {
    capture();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::new(settings(&format!("http://{addr}"), ResponseFormat::Xml)).unwrap();
    let mut p = Probe::new(&client, "511111100000001", "refused");
    assert!(matches!(p.charge().await, Outcome::NotSent(_)));
    // A status query that cannot be sent proves nothing either way.
    assert!(matches!(p.status().await, Outcome::Unknown(_)));
}

#[tokio::test]
async fn a_reused_order_number_accepted_shows_two_orders() {
    capture();
    let sandbox = start(SandboxConfig {
        duplicates: DuplicatePolicy::Accept,
        ..sandbox_config()
    })
    .await;
    let client = Client::new(settings(&sandbox.url(), ResponseFormat::Xml)).unwrap();
    let mut p = Probe::new(&client, "511111100000001", "dup");
    assert_eq!(p.charge().await, Outcome::Approved);
    assert_eq!(p.charge().await, Outcome::Approved);
    let answer = p.status_answer().await;
    assert_eq!(answer.outcome(), &Outcome::Approved);
    assert_eq!(answer.verified.approved_orders, 2);
}

#[tokio::test]
async fn the_sandbox_rate_limit_is_reported_as_rate_limited() {
    capture();
    let sandbox = start(SandboxConfig {
        requests_per_second: Some(2),
        ..sandbox_config()
    })
    .await;
    for format in [ResponseFormat::Xml, ResponseFormat::Json] {
        let client = Client::new(settings(&sandbox.url(), format)).unwrap();
        let mut limited = 0;
        for i in 0..5 {
            let mut p = Probe::new(&client, "511111100000001", &format!("rl-{format:?}-{i}"));
            if p.charge().await == Outcome::RateLimited {
                limited += 1;
            }
        }
        assert!(limited >= 2, "{format:?}: {limited}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(sandbox.book().rate_limited >= 4);
}

#[tokio::test]
async fn tokens_list_and_remove() {
    capture();
    let sandbox = start(sandbox_config()).await;
    let client = Client::new(settings(&sandbox.url(), ResponseFormat::Json)).unwrap();
    let cards = client.tokens("1234").await.unwrap();
    assert_eq!(cards.len(), 2);
    assert_eq!(cards[0].last4, "0028");
    assert_eq!(cards[0].bin, "412362");
    assert!(client.tokens("no-such-customer").await.unwrap().is_empty());
    let message = client.remove_token("1234", &cards[0].token).await.unwrap();
    assert!(message.contains("removed"), "{message}");
    assert_eq!(client.tokens("1234").await.unwrap().len(), 1);
    assert!(matches!(
        client.remove_token("1234", &cards[0].token).await,
        Err(Outcome::Rejected(_))
    ));
    let mut wrong = settings(&sandbox.url(), ResponseFormat::Json);
    wrong.login = "someone".into();
    let wrong = Client::new(wrong).unwrap();
    assert!(matches!(
        wrong.tokens("1234").await,
        Err(Outcome::Rejected(_))
    ));
}

/// A one-shot HTTP server that answers every connection with `response`.
async fn canned(response: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let response = Arc::new(response);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = Arc::clone(&response);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn oversized_redirected_and_cut_replies_are_unknown() {
    capture();
    let big = format!(
        "<result firstcode=\"0\" secondcode=\"0\" count=\"1\"><order><ordernumber>x</ordernumber><message>{}</message></order></result>",
        "A".repeat(2 * 1024 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "oversized with length",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{big}",
                big.len()
            )
            .into_bytes(),
        ),
        (
            "oversized chunked",
            {
                let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for chunk in big.as_bytes().chunks(64 * 1024) {
                    r.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
                    r.extend(chunk);
                    r.extend(b"\r\n");
                }
                r.extend(b"0\r\n\r\n");
                r
            },
        ),
        (
            "redirect",
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
        (
            "cut short",
            b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n<result firstcode=\"0\"".to_vec(),
        ),
        (
            "not http",
            b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
        ),
    ];
    for (name, response) in cases {
        let addr = canned(response).await;
        let client = Client::new(settings(&format!("http://{addr}"), ResponseFormat::Xml)).unwrap();
        let mut p = Probe::new(&client, "511111100000001", "canned");
        let claim = p.charge().await;
        assert!(matches!(claim, Outcome::Unknown(_)), "{name}: {claim}");
    }
}

/// Captures everything the library logs, at every level.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every test's logs, at every level, through one global subscriber: installed before any test
/// logs anything, so no log call site is cached as uninteresting.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        capture
    })
}

#[test]
fn secrets_never_reach_logs_errors_or_debug_output() {
    let capture = capture();
    let mut seen = String::new();
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let pem = {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    };
    {
        let signing = SigningKey::from_pem(&SecretString::from(pem.clone())).unwrap();
        tracing::info!(?signing, "loaded the signing key");
        seen.push_str(&format!("{signing:?}\n"));
        let (amount, currency) = rub("10.00");
        let signature = signing
            .sign("123456", "leak-sign", amount, currency)
            .unwrap();
        seen.push_str(&format!("{signature}\n"));
        let corrupted = SecretString::from(pem.replacen("MII", "MIJ", 1));
        if let Err(error) = SigningKey::from_pem(&corrupted) {
            seen.push_str(&format!("{error} {error:?}\n"));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let sandbox = start(sandbox_config()).await;
            seen.push_str(&format!("{sandbox:?}\n"));
            for format in [ResponseFormat::Xml, ResponseFormat::Json] {
                let client = Client::new(settings(&sandbox.url(), format)).unwrap();
                seen.push_str(&format!("{client:?}\n"));
                for bill in [
                    "511111100000001",
                    "999000000000102",
                    "999000000000409",
                    "999000000000500",
                    "999000000000666",
                    "999000000000777",
                ] {
                    let mut p = Probe::new(&client, bill, &format!("leak-{format:?}-{bill}"));
                    let claim = p.charge().await;
                    seen.push_str(&format!("{claim} {claim:?} {:?}\n", p.reply));
                    let answer = p.status_answer().await;
                    seen.push_str(&format!("{answer:?}\n"));
                }
                let mut wrong = settings(&sandbox.url(), format);
                wrong.password = SecretString::from(format!("{PASSWORD}-wrong"));
                let wrong = Client::new(wrong).unwrap();
                let mut p = Probe::new(&wrong, "511111100000001", "leak-auth");
                seen.push_str(&format!("{:?}\n", p.charge().await));
                seen.push_str(&format!("{:?}\n", wrong.tokens("1234").await));
            }
        });
    }
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("rp.cfm"), "the capture saw no gateway logs");
    for secret in [PASSWORD, SALT] {
        assert!(!logs.contains(secret), "a secret is in the logs");
        assert!(
            !seen.contains(secret),
            "a secret is in an outcome or Debug output"
        );
    }
}
