//! The real binary under a fake systemd: the paths and secrets systemd would pass
//! (`$CONFIGURATION_DIRECTORY`, `$STATE_DIRECTORY`, `$CREDENTIALS_DIRECTORY`), a datagram socket
//! as `NOTIFY_SOCKET` and a watchdog (`WATCHDOG_USEC`), against the in-process sandbox on a
//! rehearsal clock. READY=1 comes only once the store is open, the schedules synced and the
//! unresolved attempts reconciled; WATCHDOG=1 keeps coming; SIGHUP gives RELOADING=1 then
//! READY=1; SIGTERM gives STOPPING=1 and exit 0.
//! And a broken config exits 78 (not restarted by the unit) with one line.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recurrentd::gateway::sandbox::{self, Sandbox, SandboxConfig};

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Receives the next datagram, or `None` after `limit`.
fn receive(socket: &UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 4096];
    match socket.recv(&mut buffer) {
        Ok(n) => Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("notify socket: {e}"),
    }
}

/// Collects datagrams until one contains `wanted`; returns everything received up to it.
fn receive_until(socket: &UnixDatagram, wanted: &str, limit: Duration, log: &Path) -> Vec<String> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < limit {
        if let Some(message) = receive(socket, Duration::from_millis(200)) {
            let done = message.lines().any(|l| l == wanted);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
    panic!(
        "no {wanted} within {limit:?}; received {seen:?}\n--- log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the daemon did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon as systemd starts it: the unit's layout (`$CONFIGURATION_DIRECTORY`,
/// `$STATE_DIRECTORY`, `$CREDENTIALS_DIRECTORY`), a fake `NOTIFY_SOCKET` and a 600 ms watchdog
/// (a ping every 300 ms), on a rehearsal clock from 2027-01-01 at a day per second.
struct Systemd {
    dir: tempfile::TempDir,
    socket: UnixDatagram,
    log: std::path::PathBuf,
    child: Child,
}

impl Systemd {
    fn start(sandbox: &Sandbox) -> Systemd {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        let state = dir.path().join("state");
        let credentials = dir.path().join("credentials");
        for d in [&etc, &state, &credentials] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir(etc.join("schedules")).unwrap();
        std::fs::write(
            etc.join("config.toml"),
            format!(
                "[gateway]\nurl = \"{}\"\nmerchant_id = \"{}\"\nlogin = \"{}\"\ntest_mode = true\n\
                 connect_timeout_secs = 1\ntimeout_secs = 5\n",
                sandbox.url(),
                sandbox::BUILTIN_MERCHANT_ID,
                sandbox::BUILTIN_LOGIN
            ),
        )
        .unwrap();
        std::fs::write(
            etc.join("schedules/subs.toml"),
            "[[subscription]]\nid = \"notify-1\"\nbill_number = \"5111112000000001\"\n\
             currency = \"RUB\"\namount = \"99.00\"\nevery = \"1 month\"\nstart = 2027-01-02\n\n\
             [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
             period_days = 28\nmax_date = 2027-12-31\n",
        )
        .unwrap();
        write_private(
            &credentials.join("assist-password"),
            sandbox::BUILTIN_PASSWORD,
        );
        write_private(&credentials.join("assist-salt"), sandbox::BUILTIN_SALT);

        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let log = dir.path().join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
            // No --config: the daemon finds $CONFIGURATION_DIRECTORY/config.toml by itself.
            .args(["run", "--clock-start", "2027-01-01T00:00:00Z"])
            .args(["--clock-speed", "86400"])
            .env_remove("RECURRENTD_CONFIG")
            .env_remove("RECURRENTD_SECRET_PASSWORD")
            .env_remove("RECURRENTD_SECRET_SALT")
            .env_remove("RECURRENTD_FAILPOINT")
            .env_remove("WATCHDOG_PID")
            .env("CONFIGURATION_DIRECTORY", &etc)
            .env("STATE_DIRECTORY", &state)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "600000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        Systemd {
            dir,
            socket,
            log,
            child,
        }
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_and_stopping_over_a_fake_notify_socket() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut systemd = Systemd::start(&sandbox);
    let (socket, log, state) = (&systemd.socket, systemd.log.clone(), systemd.state());
    let before_ready = receive_until(socket, "READY=1", Duration::from_secs(30), &log);
    // READY=1 only once the store is open, the schedules synced and the attempts reconciled.
    let logged = std::fs::read_to_string(&log).unwrap();
    for step in [
        "store open",
        "schedules synced",
        "reconciled unresolved attempts",
    ] {
        assert!(logged.contains(step), "READY=1 before {step:?}:\n{logged}");
    }
    // The first start in an empty state directory created the database, and said why.
    assert!(
        logged
            .lines()
            .any(|l| l.contains("created a new, empty database")
                && l.contains("first start under systemd")),
        "{logged}"
    );
    assert!(
        state.join("recurrentd.db").exists(),
        "the database is not in $STATE_DIRECTORY"
    );
    let ready = before_ready.last().unwrap();
    assert!(
        ready.contains("STATUS=running: 1 active subscription(s)"),
        "{ready:?}"
    );
    assert!(
        before_ready
            .iter()
            .any(|m| m.contains("STATUS=reconciling")),
        "{before_ready:?}"
    );
    assert!(
        !before_ready.iter().any(|m| m.contains("WATCHDOG=1")),
        "a watchdog ping before READY=1: {before_ready:?}"
    );

    // The loop is healthy: pings keep coming, and ticks report in STATUS.
    let mut pings = 0;
    let mut tick_status = false;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if let Some(message) = receive(socket, Duration::from_millis(200)) {
            pings += message.lines().filter(|l| *l == "WATCHDOG=1").count();
            tick_status |= message.contains("STATUS=running: 1 active subscription(s); last tick");
        }
    }
    assert!(pings >= 3, "only {pings} watchdog ping(s) in 3 s");
    assert!(tick_status, "no STATUS= after a tick");

    // SIGHUP (systemctl reload): RELOADING=1, then READY=1 once the schedules are re-read.
    let hup = Command::new("kill")
        .args(["-HUP", &systemd.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let reload = receive_until(socket, "READY=1", Duration::from_secs(30), &log);
    let reloading = reload
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {reload:?}"));
    assert!(reload[reloading].contains("MONOTONIC_USEC="), "{reload:?}");

    let kill = Command::new("kill")
        .args(["-TERM", &systemd.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopping = receive_until(socket, "STOPPING=1", Duration::from_secs(30), &log);
    assert!(
        stopping
            .last()
            .unwrap()
            .contains("STATUS=stopping (SIGTERM)"),
        "{stopping:?}"
    );
    let status = wait(&mut systemd.child, Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    sandbox.shutdown().await;
}

/// A slow gateway does not starve the watchdog: the daemon keeps pinging (the health-check timer
/// from inside the loop, after a round trip to the store, and after each tick) while a charge is
/// in flight for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_by_the_health_check_during_a_long_tick() {
    let sandbox = Sandbox::start(
        SandboxConfig {
            latency: Duration::from_millis(1500),
            ..SandboxConfig::builtin()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let systemd = Systemd::start(&sandbox);
    receive_until(
        &systemd.socket,
        "READY=1",
        Duration::from_secs(30),
        &systemd.log,
    );
    // The first charge (2027-01-02) falls due about a second after READY=1; its tick then waits
    // for rp.cfm and the status query, 1.5 s each. Count the pings until a tick reports a charge.
    let mut pings_during_tick = 0;
    let mut in_tick_pings = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no tick with a charge reported; log:\n{}",
            std::fs::read_to_string(&systemd.log).unwrap_or_default()
        );
        let Some(message) = receive(&systemd.socket, Duration::from_millis(200)) else {
            continue;
        };
        if message.contains("last tick") && message.contains("1 approved") {
            break;
        }
        if message.contains("last tick") && message.contains("1 new charge") {
            // The tick that sent it; its send goes on after the tick (a tick does not wait for
            // a slow send), and the pings from here on are those while it is in flight.
            in_tick_pings = 0;
            continue;
        }
        in_tick_pings += message.lines().filter(|l| *l == "WATCHDOG=1").count();
        pings_during_tick = pings_during_tick.max(in_tick_pings);
    }
    // 3 s in flight at a ping every 300 ms.
    assert!(
        pings_during_tick >= 4,
        "only {pings_during_tick} watchdog ping(s) during a 3 s tick"
    );
    let logged = std::fs::read_to_string(&systemd.log).unwrap();
    assert!(!logged.contains("health check failed"), "{logged}");
    sandbox.shutdown().await;
}

#[test]
fn under_systemd_a_broken_config_or_a_missing_secret_exits_78_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[gateway]\nurl = \"https://payments.demo.paysecure.ru\"\nmerchant_id = \"1\"\n\
         login = \"l\"\nretries = 3\n",
    )
    .unwrap();
    // Found through $CONFIGURATION_DIRECTORY, as under the unit.
    let out = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("run")
        .env_remove("RECURRENTD_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env("CONFIGURATION_DIRECTORY", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("config.toml"), "{stderr}");
    assert!(stderr.contains("retries"), "{stderr}");

    // A missing secret is a configuration error too (the unit does not restart on it).
    std::fs::write(
        dir.path().join("config.toml"),
        "[gateway]\nurl = \"https://payments.demo.paysecure.ru\"\nmerchant_id = \"1\"\n\
         login = \"l\"\n",
    )
    .unwrap();
    let empty_credentials = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("run")
        .env_remove("RECURRENTD_CONFIG")
        .env_remove("RECURRENTD_SECRET_PASSWORD")
        .env_remove("RECURRENTD_SECRET_SALT")
        .env("CONFIGURATION_DIRECTORY", dir.path())
        .env("CREDENTIALS_DIRECTORY", empty_credentials.path())
        .env("STATE_DIRECTORY", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("assist-password"), "{stderr}");
}
