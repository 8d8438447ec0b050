//! The real daemon on the real clock, as under systemd: its cron-driven sweep, the schedule
//! folder watched for changes, and operator commands on its live database — an ad-hoc charge
//! queued while it runs is made within a sweep or two, verified and in the history.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
use secrecy::SecretString;

const PASSWORD: &str = "live-test-password";
const SALT: &str = "live-test-salt";

fn subscription(id: &str, bill: &str) -> String {
    // Scheduled far ahead: on the real clock only ad-hoc charges are due.
    format!(
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"{bill}\"\ncurrency = \"RUB\"\n\
         amount = \"100.00\"\nevery = \"1 month\"\nstart = 2098-01-01\n\n\
         [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
         period_days = 28\nmax_date = 2099-12-31\n\n"
    )
}

fn recurrentd(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RECURRENTD_CONFIG")
        .output()
        .unwrap()
}

/// Polls `check` every 200 ms until it is true, or fails after `limit` with `what`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn history(config: &Path, subscription: &str) -> Vec<serde_json::Value> {
    let output = recurrentd(config, &["history", subscription, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_daemon_sweeps_on_its_cron_follows_file_changes_and_makes_adhoc_charges() {
    let sandbox = Sandbox::start(
        SandboxConfig {
            password: SecretString::from(PASSWORD),
            salt: SecretString::from(SALT),
            ..SandboxConfig::builtin()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let schedules = dir.path().join("schedules");
    std::fs::create_dir(&schedules).unwrap();
    std::fs::write(
        schedules.join("a.toml"),
        subscription("live-1", "4100000000000001"),
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nurl = \"{}\"\nmerchant_id = \"123456\"\nlogin = \"sandbox\"\n\
             test_mode = true\nconnect_timeout_secs = 2\ntimeout_secs = 5\n\n\
             [daemon]\nsweep_cron = \"* * * * * *\"\n",
            sandbox.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = Daemon {
        child: Command::new(env!("CARGO_BIN_EXE_recurrentd"))
            .arg("--config")
            .arg(&config)
            // A new installation: the first start creates the database.
            .args(["run", "--init"])
            .env("RECURRENTD_SECRET_PASSWORD", PASSWORD)
            .env("RECURRENTD_SECRET_SALT", SALT)
            .env("RUST_LOG", "info")
            .env_remove("RECURRENTD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };
    eventually(Duration::from_secs(30), "the daemon running", || {
        daemon.log().contains("running")
    })
    .await;
    assert!(daemon.log().contains("cron"), "{}", daemon.log());

    // An ad-hoc charge queued on the live database is made by a sweep, and verified.
    let queued = recurrentd(
        &config,
        &[
            "charge",
            "live-1",
            "--amount",
            "120.00",
            "--reference",
            "T-1",
        ],
    );
    assert_eq!(queued.status.code(), Some(0), "{queued:?}");
    eventually(
        Duration::from_secs(20),
        "the ad-hoc charge approved",
        || {
            history(&config, "live-1")
                .iter()
                .any(|row| row["period"] == "adhoc:T-1" && row["state"] == "approved")
        },
    )
    .await;
    let rows = history(&config, "live-1");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["checkvalue"], "verified");
    let order = rows[0]["order_number"].as_str().unwrap().to_string();
    let book = sandbox.book();
    assert_eq!(
        book.rp_requests
            .iter()
            .filter(|r| r.order_number == order)
            .count(),
        1,
        "sent exactly once"
    );
    // Within the agreement's 28 days of it, another one is refused at once.
    let refused = recurrentd(
        &config,
        &[
            "charge",
            "live-1",
            "--amount",
            "60.00",
            "--reference",
            "T-2",
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("28 days"),
        "{refused:?}"
    );

    // A new schedule file is picked up without a signal.
    std::fs::write(
        schedules.join("b.toml"),
        subscription("live-2", "4100000000000002"),
    )
    .unwrap();
    eventually(Duration::from_secs(15), "the new file read", || {
        daemon.log().contains("a schedule file changed")
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "live-2 known to the database",
        || {
            recurrentd(
                &config,
                &[
                    "charge",
                    "live-2",
                    "--amount",
                    "70.00",
                    "--reference",
                    "T-3",
                ],
            )
            .status
            .code()
                == Some(0)
        },
    )
    .await;

    // A broken edit is reported with its place, and the last good version stays in force.
    std::fs::write(
        schedules.join("b.toml"),
        subscription("live-2", "4100000000000002")
            .replace("amount = \"100.00\"", "amount = \"ten\""),
    )
    .unwrap();
    eventually(Duration::from_secs(15), "the broken file reported", || {
        daemon.log().contains("b.toml:5")
    })
    .await;
    eventually(Duration::from_secs(20), "live-2's charge approved", || {
        history(&config, "live-2")
            .iter()
            .any(|row| row["period"] == "adhoc:T-3" && row["state"] == "approved")
    })
    .await;

    // SIGTERM: a clean stop.
    let pid = daemon.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    sandbox.shutdown().await;
}
