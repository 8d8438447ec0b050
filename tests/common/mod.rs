//! Helpers shared by the tests that run the real binary against an in-process sandbox on a
//! rehearsal clock: a folder with a config, schedules and a database; the daemon as a child
//! process; the operator commands.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use recurrentd::gateway::sandbox::{self, Sandbox};

/// One subscription in schedule-file syntax: monthly, RUB, limits 50.00..150.00, at least 28
/// days apart, until the end of 2027.
pub fn subscription(id: &str, bill: &str, amount: &str, start: &str) -> String {
    format!(
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"{bill}\"\ncurrency = \"RUB\"\n\
         amount = \"{amount}\"\nevery = \"1 month\"\nstart = {start}\n\n\
         [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
         period_days = 28\nmax_date = 2027-12-31\n\n"
    )
}

/// A folder with `config.toml` pointing at a sandbox (built-in credentials, test mode),
/// `schedules/` and, once the daemon ran, `recurrentd.db`.
pub struct Rig {
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// `gateway_extra` is appended to the `[gateway]` table.
    pub fn new(sandbox: &Sandbox, gateway_extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "[gateway]\nurl = \"{}\"\nmerchant_id = \"{}\"\nlogin = \"{}\"\ntest_mode = true\n\
                 connect_timeout_secs = 1\ntimeout_secs = 10\n{gateway_extra}",
                sandbox.url(),
                sandbox::BUILTIN_MERCHANT_ID,
                sandbox::BUILTIN_LOGIN
            ),
        )
        .unwrap();
        Rig { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("recurrentd.db")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Writes a schedule file (atomically: a temporary file renamed over it, as an editor
    /// would, so the daemon never reads half of it).
    pub fn write_schedule(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.dir.path().join("schedules").join(name)).unwrap();
    }

    /// The daemon on a rehearsal clock, its stderr to [`Rig::log`]. Its first start (no
    /// database yet) is a new installation's: `--init` creates the database.
    pub fn spawn(&self, clock_start: &str, speed: u32, until: Option<&str>) -> Child {
        let mut command = self.command();
        command.args(["run", "--clock-start", clock_start]);
        if !self.db().exists() {
            command.arg("--init");
        }
        command
            .args(["--clock-speed", &speed.to_string()])
            .env("RUST_LOG", "info")
            .env_remove("RECURRENTD_FAILPOINT")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(self.log()).unwrap()));
        if let Some(until) = until {
            command.args(["--until", until]);
        }
        command.spawn().unwrap()
    }

    /// An operator command, run to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// `history --json` (of one subscription, or all).
    pub fn history(&self, subscription: Option<&str>) -> Vec<serde_json::Value> {
        let mut args = vec!["history", "--json"];
        args.extend(subscription);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// [`Rig::history`], or `None` while it fails (no database yet, or not migrated yet).
    pub fn try_history(&self, subscription: Option<&str>) -> Option<Vec<serde_json::Value>> {
        let mut args = vec!["history", "--json"];
        args.extend(subscription);
        let out = self.run(&args);
        if !out.status.success() {
            return None;
        }
        Some(
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .unwrap()
                .as_array()
                .unwrap()
                .clone(),
        )
    }

    /// The binary with this rig's config and secrets, and none of systemd's variables.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recurrentd"));
        command
            .arg("--config")
            .arg(self.config())
            .env_remove("RECURRENTD_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .env_remove("CONFIGURATION_DIRECTORY")
            .env("RECURRENTD_SECRET_PASSWORD", sandbox::BUILTIN_PASSWORD)
            .env("RECURRENTD_SECRET_SALT", sandbox::BUILTIN_SALT);
        command
    }
}

/// Sends a signal to a child.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for a child to exit; kills it and panics after `limit`.
pub fn wait(child: &mut Child, limit: Duration, log: &Path) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon did not exit within {limit:?}\n--- log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` every 100 ms until it returns `Some`; panics with the log after `limit`.
pub fn until<T>(
    limit: Duration,
    log: &Path,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if started.elapsed() > limit {
            panic!(
                "{what}: not within {limit:?}\n--- log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
