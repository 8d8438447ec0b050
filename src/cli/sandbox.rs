//! `recurrentd sandbox`: the built-in Assist emulator, for demos and rehearsals.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

use super::exit;
use crate::config::{self, Config, SecretName};
use crate::gateway::sandbox::{self, DuplicatePolicy, Sandbox, SandboxConfig};
use crate::gateway::signature::SigningKey;

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Loopback address and port to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8089", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Delay every reply by this many milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,

    /// Answer requests beyond this many per second with Assist's rate-limit error (1/3).
    #[arg(long, value_name = "N")]
    pub requests_per_second: Option<u32>,

    /// What a reused OrderNumber does: refused with 11/201, or accepted as a new order.
    #[arg(long, value_enum, default_value_t = Duplicates::Reject)]
    pub duplicates: Duplicates,

    /// How long bill numbers ending in 408 hold their reply (the "timeout after charge" fault).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub hang_secs: u64,

    /// How many status queries an In Process order (bill numbers ending 300/301) survives.
    #[arg(long, default_value_t = sandbox::BUILTIN_SETTLE_AFTER, value_name = "N")]
    pub settle_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Duplicates {
    Reject,
    Accept,
}

pub fn run(config: &Config, args: &SandboxArgs) -> u8 {
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "recurrentd: the sandbox listens on loopback only (127.0.0.1 or ::1), not {}",
            args.listen.ip()
        );
        return exit::USAGE;
    }
    if !config.gateway.test_mode {
        eprintln!(
            "recurrentd: the sandbox only runs in test mode: its orders are not money. Set \
             gateway.test_mode = true (or RECURRENTD_GATEWAY__TEST_MODE=true) for a rehearsal"
        );
        return exit::CONFIG;
    }
    // The configured secrets when there are any, so a rehearsal uses the real setup; the
    // sandbox's own otherwise.
    let secret = |name, builtin: &str| -> Result<(SecretString, bool), u8> {
        match config::load_secret(&config.gateway, name) {
            Ok(Some(value)) => Ok((value, false)),
            Ok(None) => Ok((SecretString::from(builtin), true)),
            Err(error) => {
                eprintln!("recurrentd: configuration error: {error}");
                Err(exit::CONFIG)
            }
        }
    };
    let (password, builtin_password) = match secret(SecretName::Password, sandbox::BUILTIN_PASSWORD)
    {
        Ok(found) => found,
        Err(code) => return code,
    };
    let (salt, builtin_salt) = match secret(SecretName::Salt, sandbox::BUILTIN_SALT) {
        Ok(found) => found,
        Err(code) => return code,
    };
    // With gateway.sign_requests, the sandbox checks Token Pay signatures with the public half of
    // the configured key, as Assist does with the key uploaded to it.
    let verify_key = if config.gateway.sign_requests {
        match config::load_secret(&config.gateway, SecretName::PrivateKey) {
            Ok(Some(pem)) => match SigningKey::from_pem(&pem) {
                Ok(key) => Some(key.public_key()),
                Err(error) => {
                    eprintln!("recurrentd: configuration error: {error}");
                    return exit::CONFIG;
                }
            },
            Ok(None) => None,
            Err(error) => {
                eprintln!("recurrentd: configuration error: {error}");
                return exit::CONFIG;
            }
        }
    } else {
        None
    };
    let signatures_checked = verify_key.is_some();
    let sandbox_config = SandboxConfig {
        merchant_id: config.gateway.merchant_id.clone(),
        login: config.gateway.login.clone(),
        password,
        salt,
        test_mode: true,
        latency: Duration::from_millis(args.latency_ms),
        requests_per_second: args.requests_per_second,
        duplicates: match args.duplicates {
            Duplicates::Reject => DuplicatePolicy::Reject,
            Duplicates::Accept => DuplicatePolicy::Accept,
        },
        hang: Duration::from_secs(args.hang_secs),
        settle_after: args.settle_after,
        verify_key,
        ..SandboxConfig::builtin()
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let sandbox = Sandbox::start(sandbox_config, args.listen).await?;
        println!(
            "Assist sandbox on {} (merchant {}, login {}, {} mode). Ctrl-C stops it.",
            sandbox.url(),
            config.gateway.merchant_id,
            config.gateway.login,
            if config.gateway.test_mode {
                "test"
            } else {
                "live"
            }
        );
        println!("Point recurrentd at it from another terminal:");
        println!("  export RECURRENTD_GATEWAY__URL={}", sandbox.url());
        // Only the sandbox's own, public secrets are ever printed.
        if builtin_password {
            println!(
                "  export {}={}",
                SecretName::Password.env_var(),
                sandbox::BUILTIN_PASSWORD
            );
        }
        if builtin_salt {
            println!(
                "  export {}={}",
                SecretName::Salt.env_var(),
                sandbox::BUILTIN_SALT
            );
        }
        println!(
            "Bill numbers starting with 999 choose a behaviour by their last three digits \
             (README, \"The sandbox\")."
        );
        if signatures_checked {
            println!(
                "Token Pay signatures are checked with the public half of the configured key."
            );
        }
        let _ = tokio::signal::ctrl_c().await;
        sandbox.shutdown().await;
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => exit::OK,
        Err(error) => {
            eprintln!(
                "recurrentd: cannot start the sandbox on {}: {error}",
                args.listen
            );
            exit::UNAVAILABLE
        }
    }
}
