//! `berthd`: the Berth container runtime daemon (CRI runtime.v1 over a Unix socket).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::LazyLock;

use berth_server::config::{Config, LogFormat};
use berth_server::daemon;
use clap::{Parser, Subcommand};

/// What `berthd --version` prints after the name: Berth's version, the git commit it
/// was built from (build.rs; "unknown" outside a git checkout) and the CRI API it
/// serves (the vendored k8s.io/cri-api module version).
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{}\ncommit: {}\nCRI API: runtime.v1 (k8s.io/cri-api {})",
        env!("CARGO_PKG_VERSION"),
        env!("BERTH_GIT_COMMIT"),
        berth_proto::CRI_API_VERSION
    )
});

/// `berthd --help` (the long form) reads as the man page does (deploy/berthd.8): what
/// it is, then files, signals, environment and exit status after the options.
const LONG_ABOUT: &str = "\
Berth: a Kubernetes container runtime (CRI runtime.v1)

berthd serves the CRI RuntimeService and ImageService on a Unix socket for kubelet
and crictl. It builds pod sandboxes and containers itself (namespaces, cgroups,
overlayfs, seccomp), one berth-monitor process per container, and uses berth-runtime
for exec; both must sit in berthd's directory. Containers keep running when berthd
stops or restarts; a new berthd recovers them.

Without a command, berthd runs in the foreground until SIGTERM or SIGINT, logging to
stderr. It needs root. Command-line options override the configuration file.";

const AFTER_LONG_HELP: &str = "\
Files:
  /etc/berth/config.toml  Configuration, read when it exists and --config is not
                          given; `berthd config default` prints every key.
  /run/berth/berth.sock   The CRI socket (grpc.socket), mode 0660.
  /var/lib/berth          Durable state: images, pod and container records (root_dir).
  /run/berth              Volatile state: namespaces, monitors, the lock (state_dir).
  /etc/berth/certs.d      Registry mirrors and CAs, <host>/hosts.toml (registry.config_path).
  /etc/cni/net.d          Pod network: the first CNI config; plugins in /opt/cni/bin
                          and /usr/lib/cni. Without one, a built-in bridge (berth0).

Signals:
  SIGTERM, SIGINT  Stop accepting, finish the RPCs in flight, remove the socket and
                   exit 0. Containers and their monitors keep running.

Environment:
  NOTIFY_SOCKET    systemd's notification socket (Type=notify): READY=1 once the
                   CRI socket serves, STOPPING=1 on a stop signal. Removed from the
                   environment of everything berthd starts.

Exit status:
  0 after a clean stop or a successful command; 1 on an error, printed as one line
  starting with `berthd: error:`.

See also: berthd(8), crictl(1), systemd unit berthd.service; docs/ in the sources.";

#[derive(Debug, Parser)]
#[command(
    name = "berthd",
    version = VERSION.as_str(),
    about = "Berth: a Kubernetes container runtime (CRI runtime.v1)",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
struct Cli {
    /// Configuration file (TOML). Without it, /etc/berth/config.toml is read if it
    /// exists, else the built-in defaults apply.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override `grpc.socket`.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Override `root_dir` (durable state).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Override `state_dir` (volatile state).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Override `log.level` (a tracing filter such as `debug`).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Override `log.format`.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Preflight: check, line by line, whether this host can run Berth with this
    /// configuration; exits non-zero when something essential is missing.
    Check,
    /// The node's image store, offline (run while berthd is stopped).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Load images from an OCI image-layout tar or a `docker save` tar, for
    /// air-gapped nodes.
    Import {
        /// The archive.
        file: PathBuf,
    },
    /// List the stored images.
    List,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration file.
    Default,
    /// Print the effective configuration (file plus command-line overrides).
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on, never a backtrace.
            eprintln!("berthd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Config {
        command: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{}", Config::default_toml());
        return Ok(());
    }
    let source = ConfigSource {
        file: cli.config.clone(),
        socket: cli.socket.clone(),
        root: cli.root.clone(),
        state: cli.state.clone(),
        log_level: cli.log_level.clone(),
        log_format: cli.log_format,
    };
    let config = source.load()?;

    if let Some(Command::Config {
        command: ConfigCommand::Show,
    }) = cli.command
    {
        print!("{}", toml::to_string(&config)?);
        return Ok(());
    }

    if let Some(Command::Image { command }) = cli.command {
        return image_command(&config, command);
    }

    if let Some(Command::Check) = cli.command {
        let findings = berth_server::check::run(&config);
        for finding in &findings {
            println!("{finding}");
        }
        let failed = berth_server::check::failed(&findings);
        if failed > 0 {
            anyhow::bail!("{failed} essential check(s) failed; see the FAIL lines above");
        }
        println!("berthd check: this host can run Berth");
        return Ok(());
    }

    // Before any thread exists: it removes NOTIFY_SOCKET from the environment.
    let notify = berth_server::notify::Notifier::take_from_env();
    init_logging(&config)?;
    mark_inherited_fds_cloexec();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()?;
    let loader: berth_server::reload::Loader =
        std::sync::Arc::new(move || source.load().map_err(|e| e.to_string()));
    runtime.block_on(daemon::run_with_reload(config, notify, Some(loader)))?;
    Ok(())
}

/// Where the configuration comes from: the file (or the defaults) and the
/// command-line overrides, read again on SIGHUP.
#[derive(Debug, Clone)]
struct ConfigSource {
    file: Option<PathBuf>,
    socket: Option<PathBuf>,
    root: Option<PathBuf>,
    state: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
}

impl ConfigSource {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.file.as_deref())?;
        if let Some(p) = &self.socket {
            config.grpc.socket = p.clone();
        }
        if let Some(p) = &self.root {
            config.root_dir = p.clone();
        }
        if let Some(p) = &self.state {
            config.state_dir = p.clone();
        }
        if let Some(l) = &self.log_level {
            config.log.level = l.clone();
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
        // Overrides go through the same checks as the file.
        Ok(Config::parse(&toml::to_string(&config)?)?)
    }
}

fn image_command(config: &Config, command: ImageCommand) -> anyhow::Result<()> {
    use berth_image::ImageStore;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        std::fs::create_dir_all(config.image_store_dir())?;
        let store = ImageStore::open(config.image_store_dir(), config.store_options()).map_err(
            |e| match e {
                berth_image::StoreError::Locked(_) => anyhow::anyhow!(
                    "the image store {} is in use (is berthd running?); stop berthd first",
                    config.image_store_dir().display()
                ),
                other => other.into(),
            },
        )?;
        match command {
            ImageCommand::Import { file } => {
                let images = store.import_archive(&file).await?;
                for image in images {
                    println!("imported {} {}", image.id, image.repo_tags.join(" "));
                }
            }
            ImageCommand::List => {
                println!("{:<71}  {:>12}  NAMES", "ID", "SIZE");
                for image in store.list() {
                    let mut names = image.repo_tags.clone();
                    if names.is_empty() {
                        names = image.repo_digests.clone();
                    }
                    println!("{:<71}  {:>12}  {}", image.id, image.size, names.join(" "));
                }
            }
        }
        Ok(())
    })
}

/// The tracing filter of a `log.level`. A bare level ("debug") is about Berth itself:
/// the HTTP/2 stack's frame-by-frame debug output would drown it, so dependencies stay
/// at info unless named.
fn log_filter(level: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let trimmed = level.trim();
    let directive = if trimmed.contains(['=', ',']) {
        trimmed.to_owned()
    } else {
        format!("{trimmed},h2=info,hyper=info,hyper_util=info,tower=info,tonic=info")
    };
    tracing_subscriber::EnvFilter::try_new(&directive)
        .map_err(|e| anyhow::anyhow!("invalid log.level {level:?}: {e}"))
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Behind a reload layer: SIGHUP can change log.level (reload.rs).
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(&config.log.level)?);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    match config.log.format {
        LogFormat::Text => registry.with(fmt.with_target(false)).init(),
        LogFormat::Json => registry.with(fmt.json().with_current_span(true)).init(),
    }
    berth_server::reload::set_log_filter_setter(Box::new(move |level| {
        let filter = log_filter(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
    Ok(())
}

/// Descriptors berthd inherited beyond stdio (a lock held by the shell that started
/// it, a socket of a supervisor) must not reach what berthd spawns: infra processes,
/// monitors and containers would keep them open for their whole life. Everything
/// berthd opens itself is close-on-exec already.
fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets a flag on our own
    // descriptors from 3 up; it closes nothing and touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not mark inherited file descriptors close-on-exec"
        );
    }
}
