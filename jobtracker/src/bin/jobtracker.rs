//! The `jobtracker` binary: parse config, set up logs, run the library.

use lts_common::runtime::{init_tracing, shutdown_signal};
use lts_jobtracker::config::Cli;
use lts_jobtracker::{StoreConfig, TrackerConfig};

// sled copies tree nodes on every write; glibc's allocator spent about a
// third of the tracker's CPU on those buffers, mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("hash-token") {
        let mut token = String::new();
        std::io::stdin().read_line(&mut token)?;
        if token.trim().is_empty() {
            eprintln!("error: hash-token: give the token on stdin");
            std::process::exit(2);
        }
        println!("{}", lts_jobtracker::auth::hash_token(&token));
        return Ok(());
    }
    let cli: Cli = lts_common::config::parse_with_file();
    let mut config = match TrackerConfig::try_from(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if cli.check_config {
        let settings = lts_common::config::effective_settings::<Cli, _>(std::env::args_os())?;
        println!("config OK; effective settings:");
        print!("{}", lts_common::config::settings_text(&settings));
        return Ok(());
    }
    init_tracing(cli.log_format);
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --listen {}: {e}", cli.listen);
            std::process::exit(2);
        }
    };
    if cli.mongodb_instance.is_none() && cli.listen.port() == 0 {
        // The default instance name holds the port: the bound one.
        if let Ok(bound) = listener.local_addr() {
            let name = lts_jobtracker::config::default_instance(bound.port());
            if let StoreConfig::Mongo { instance, .. } = &mut config.store {
                *instance = name.clone();
            }
            if let Some(cluster) = &mut config.cluster {
                cluster.identity = name;
            }
        }
    }
    if let Err(e) = lts_jobtracker::serve(config, listener, shutdown_signal()).await {
        tracing::error!("{e}");
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    Ok(())
}
