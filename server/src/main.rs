//! `berthd`: the Berth container runtime daemon (CRI runtime.v1 over a Unix socket).

#![deny(unsafe_code)]

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
  SIGHUP           Read the configuration file again: keys that can change live
                   apply at once, the others are logged as needing a restart.

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
    /// The node's image store: through the running berthd (its admin socket), or
    /// directly on disk while berthd is stopped.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Load images from an OCI image-layout tar or a `docker save` tar (gzip or
    /// not), for air-gapped nodes. Shows progress on stderr (a line rewritten in
    /// place on a terminal, a plain line per layer otherwise).
    Import {
        /// The archive (a regular file).
        file: PathBuf,
    },
    /// Pull an image from its registry, showing per-layer progress (anonymous, or
    /// with the credentials the registry's `hosts.toml` under `registry.config_path`
    /// gives).
    Pull {
        /// Tag or digest reference (`docker.io/library/busybox:1.36`).
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// List the stored images.
    List,
    /// Remove images with all their tags (CRI RemoveImage: containers using one
    /// keep running on their own copy of its layers).
    #[command(visible_alias = "rmi")]
    Rm {
        /// Remove images pinned by `image.pinned_images` too.
        #[arg(long, short = 'f')]
        force: bool,
        /// Tags, digest references or image ids.
        #[arg(required = true, value_name = "REF")]
        refs: Vec<String>,
    },
    /// Write images to a tar that is both a `docker save` archive and an OCI image
    /// layout (`docker load`, `ctr images import` and `berthd image import` read it).
    Export {
        /// The archive to write (replaced if it exists).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: PathBuf,
        /// Tags, digest references or image ids.
        #[arg(required = true, value_name = "REF")]
        refs: Vec<String>,
    },
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
    use berth_server::admin;
    let socket = admin::socket_path(&config.state_dir);
    let live = admin::connect(&config.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the running berthd at {}: {e}{}",
            socket.display(),
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (run as root)"
            } else {
                ""
            }
        )
    })?;
    match live {
        Some(stream) => image_command_live(stream, command),
        None => image_command_offline(config, command),
    }
}

/// Progress on stderr: a line rewritten in place on a terminal, plain step lines
/// otherwise.
fn progress_renderer(
    what: String,
    archive_bytes: u64,
) -> berth_server::progress::Renderer<std::io::Stderr> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    berth_server::progress::Renderer::new(std::io::stderr(), tty, what, archive_bytes)
}

/// A progress renderer on stderr that the image store's progress callbacks feed.
struct SharedRenderer(
    std::sync::Arc<std::sync::Mutex<berth_server::progress::Renderer<std::io::Stderr>>>,
);

impl SharedRenderer {
    fn new(renderer: berth_server::progress::Renderer<std::io::Stderr>) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(renderer)))
    }

    /// A store progress callback showing each step `p` as `wrap(p)`.
    fn callback<P: 'static>(
        &self,
        wrap: fn(P) -> berth_server::admin::Progress,
    ) -> std::sync::Arc<dyn Fn(P) + Send + Sync> {
        let shown = std::sync::Arc::clone(&self.0);
        std::sync::Arc::new(move |p| {
            shown
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .show(wrap(p));
        })
    }

    fn finish(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).finish();
    }
}

fn import_renderer(
    file: &std::fs::File,
    path: &std::path::Path,
) -> berth_server::progress::Renderer<std::io::Stderr> {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    progress_renderer(format!("importing {}", path.display()), size)
}

fn print_pulled(images: &[berth_server::admin::Summary]) {
    for image in images {
        println!("pulled {} {}", image.id, image.names.join(" "));
    }
}

fn print_imported(images: &[berth_server::admin::Summary]) {
    for image in images {
        println!("imported {} {}", image.id, image.names.join(" "));
    }
}

fn print_list(images: &[berth_server::admin::Summary]) {
    println!("{:<71}  {:>12}  {:<6}  NAMES", "ID", "SIZE", "PINNED");
    for image in images {
        let pinned = if image.pinned { "yes" } else { "" };
        println!(
            "{:<71}  {:>12}  {:<6}  {}",
            image.id,
            image.size,
            pinned,
            image.names.join(" ")
        );
    }
}

/// What `rm` prints; an error when some name could not be removed.
fn report_removed(
    removed: &[berth_server::admin::Summary],
    errors: &[String],
) -> anyhow::Result<()> {
    for image in removed {
        println!("removed {} {}", image.id, image.names.join(" "));
    }
    for e in errors {
        eprintln!("berthd: error: {e}");
    }
    if !errors.is_empty() {
        anyhow::bail!("{} image(s) not removed", errors.len());
    }
    Ok(())
}

/// Opens the output of `export` (the client creates it, with its own rights).
fn create_output(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))
}

fn exported(
    path: &std::path::Path,
    result: anyhow::Result<Vec<berth_server::admin::Summary>>,
) -> anyhow::Result<()> {
    match result {
        Ok(images) => {
            for image in images {
                println!("exported {} {}", image.id, image.names.join(" "));
            }
            Ok(())
        }
        Err(e) => {
            // A half-written archive is worse than none.
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Through the running daemon's admin socket.
fn image_command_live(
    stream: std::os::unix::net::UnixStream,
    command: ImageCommand,
) -> anyhow::Result<()> {
    use berth_server::admin::{Request, call};
    use std::os::fd::AsFd;
    match command {
        ImageCommand::Import { file } => {
            let archive = std::fs::File::open(&file)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", file.display()))?;
            let mut progress = import_renderer(&archive, &file);
            let request = Request::Import {
                label: file.display().to_string(),
            };
            let result = call(stream, &request, Some(archive.as_fd()), |p| {
                progress.show(p)
            });
            progress.finish();
            print_imported(&result?.0);
        }
        ImageCommand::Pull { reference } => {
            let mut progress = progress_renderer(format!("pulling {reference}"), 0);
            let request = Request::Pull {
                reference: reference.clone(),
            };
            let result = call(stream, &request, None, |p| progress.show(p));
            progress.finish();
            print_pulled(&result?.0);
        }
        ImageCommand::List => print_list(&call(stream, &Request::List, None, |_| {})?.0),
        ImageCommand::Rm { force, refs } => {
            let (removed, errors) = call(stream, &Request::Remove { refs, force }, None, |_| {})?;
            report_removed(&removed, &errors)?;
        }
        ImageCommand::Export { output, refs } => {
            let file = create_output(&output)?;
            let result = call(
                stream,
                &Request::Export { refs },
                Some(file.as_fd()),
                |_| {},
            );
            exported(&output, result.map(|(images, _)| images))?;
        }
    }
    Ok(())
}

/// Directly on the store, while no berthd runs.
fn image_command_offline(config: &Config, command: ImageCommand) -> anyhow::Result<()> {
    use berth_image::ImageStore;
    use berth_server::admin::Summary;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        std::fs::create_dir_all(config.image_store_dir())?;
        let store = ImageStore::open(config.image_store_dir(), config.store_options()).map_err(
            |e| match e {
                berth_image::StoreError::Locked(_) => anyhow::anyhow!(
                    "the image store {} is in use (is berthd running?) and no berthd answers on {}; stop berthd first",
                    config.image_store_dir().display(),
                    berth_server::admin::socket_path(&config.state_dir).display()
                ),
                other => other.into(),
            },
        )?;
        let summaries = |images: &[berth_image::Image]| -> Vec<Summary> {
            images.iter().map(|i| Summary::of(&store, i)).collect()
        };
        match command {
            ImageCommand::Import { file } => {
                let archive = std::fs::File::open(&file)
                    .map_err(|e| anyhow::anyhow!("opening {}: {e}", file.display()))?;
                let progress = SharedRenderer::new(import_renderer(&archive, &file));
                let result = store
                    .import_archive_file(
                        archive,
                        &file,
                        Some(progress.callback(berth_server::admin::Progress::Import)),
                    )
                    .await;
                progress.finish();
                print_imported(&summaries(&result?));
            }
            ImageCommand::Pull { reference } => {
                let progress =
                    SharedRenderer::new(progress_renderer(format!("pulling {reference}"), 0));
                let result = store
                    .pull_with_progress(
                        &reference,
                        &berth_image::Auth::anonymous(),
                        Some(progress.callback(berth_server::admin::Progress::Pull)),
                    )
                    .await;
                progress.finish();
                print_pulled(&summaries(std::slice::from_ref(&result?)));
            }
            ImageCommand::List => print_list(&summaries(&store.list())),
            ImageCommand::Rm { force, refs } => {
                let mut removed = Vec::new();
                let mut errors = Vec::new();
                for r in &refs {
                    match store.remove_with(r, force).await {
                        Ok(Some(image)) => removed.push(Summary::of(&store, &image)),
                        Ok(None) => errors.push(format!("image {r:?} is not present")),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                report_removed(&removed, &errors)?;
            }
            ImageCommand::Export { output, refs } => {
                let file = create_output(&output)?;
                let result = store.export_archive(&refs, file).await;
                exported(
                    &output,
                    result.map(|images| summaries(&images)).map_err(Into::into),
                )?;
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
#[allow(unsafe_code)] // close_range(2): rustix has no safe wrapper for it
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
