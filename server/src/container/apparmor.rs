//! AppArmor for containers: which profile a CRI security context asks for, whether this
//! host can honour it, and Berth's RuntimeDefault profile (`berth-default`), rendered from
//! `apparmor_default.profile` and loaded with `apparmor_parser -Kr` the first time a
//! container needs it (and again if someone unloaded it).
//!
//! The decisions follow containerd's CRI plugin, so pods behave the same on both:
//! - AppArmor enabled: no profile asked for, or RuntimeDefault, gives `berth-default`
//!   (nothing for a privileged container); Unconfined gives nothing; Localhost gives the
//!   named profile, which must already be loaded (FailedPrecondition naming it otherwise).
//! - AppArmor not enabled (this CI host): no profile or Unconfined run as they are; a
//!   RuntimeDefault or Localhost request fails with FailedPrecondition rather than run a
//!   container without the confinement it asked for.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_proto::v1::SecurityProfile;
use berth_proto::v1::security_profile::ProfileType;

use super::error::{Error, Result};
use crate::error::Plain;

/// The name of Berth's RuntimeDefault profile.
pub const DEFAULT_PROFILE: &str = "berth-default";

/// The profile's source, with `{{...}}` placeholders filled by [`render`].
const TEMPLATE: &str = include_str!("apparmor_default.profile");

/// Longest profile name accepted from a pod spec (the kernel's own limit is a page).
const MAX_NAME: usize = 255;

/// How long `apparmor_parser` may take to compile and load the default profile (the
/// emulated CI guest is ~40× slower than a real host).
const PARSER_TIMEOUT: Duration = Duration::from_secs(120);

/// The kernel's list of loaded profiles, one `name (mode)` per line.
const PROFILES_FILE: &str = "/sys/kernel/security/apparmor/profiles";

/// What a security context asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Nothing: the runtime's default applies where AppArmor is enabled.
    Unset,
    /// `RuntimeDefault` / `runtime/default`.
    RuntimeDefault,
    /// `Unconfined` / `unconfined`.
    Unconfined,
    /// `Localhost` / `localhost/<name>`: a profile loaded on the node.
    Localhost(String),
}

impl Request {
    /// Parses a security context's `apparmor` field, or, when it is absent, the deprecated
    /// `apparmor_profile` string (kubelet sends both; the structured one wins, as in
    /// containerd). `field` names the security context in errors.
    pub fn parse(field: &str, profile: Option<&SecurityProfile>, deprecated: &str) -> Result<Self> {
        let Some(p) = profile else {
            return match deprecated {
                "" => Ok(Self::Unset),
                "runtime/default" => Ok(Self::RuntimeDefault),
                "unconfined" => Ok(Self::Unconfined),
                other => match other.strip_prefix("localhost/") {
                    Some(name) => {
                        validate_name(&format!("{field}.apparmor_profile"), name)?;
                        Ok(Self::Localhost(name.to_owned()))
                    }
                    None => Err(Error::invalid_argument(format!(
                        "{field}.apparmor_profile {other:?}: expected runtime/default, unconfined or localhost/<profile name>"
                    ))),
                },
            };
        };
        let ty = ProfileType::try_from(p.profile_type).map_err(|_| {
            Error::invalid_argument(format!(
                "{field}.apparmor.profile_type {} is unknown",
                p.profile_type
            ))
        })?;
        if ty != ProfileType::Localhost && !p.localhost_ref.is_empty() {
            return Err(Error::invalid_argument(format!(
                "{field}.apparmor.localhost_ref {:?} is set but profile_type is {}: it must be Localhost",
                p.localhost_ref,
                ty.as_str_name()
            )));
        }
        Ok(match ty {
            ProfileType::RuntimeDefault => Self::RuntimeDefault,
            ProfileType::Unconfined => Self::Unconfined,
            ProfileType::Localhost => {
                // Older kubelets passed the deprecated form's prefix along.
                let name = p
                    .localhost_ref
                    .strip_prefix("localhost/")
                    .unwrap_or(&p.localhost_ref);
                validate_name(&format!("{field}.apparmor.localhost_ref"), name)?;
                Self::Localhost(name.to_owned())
            }
        })
    }
}

/// A Localhost profile name from a pod spec: it is written to `/proc/self/attr/exec` as
/// `exec <name>` and looked up in the kernel's profile list, so it must be one printable
/// word — no whitespace or control characters (a newline would end the command), not a
/// policy namespace (`:ns:`) and not a stack (`&`), which would confine by something
/// other than the profile the list shows as loaded.
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid_argument(format!(
            "{field} {name:?}: {why}; give the name of a profile loaded on the node"
        )))
    };
    if name.is_empty() {
        return bad("empty AppArmor profile name");
    }
    if name.len() > MAX_NAME {
        return bad(&format!("longer than {MAX_NAME} bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("an AppArmor profile name cannot hold whitespace or control characters");
    }
    if name.starts_with(':') || name.contains('&') {
        return bad("policy namespaces (:ns:) and stacks (&) are not accepted");
    }
    if name == "unconfined" {
        return bad("use the Unconfined profile type for no confinement");
    }
    Ok(())
}

/// The host's AppArmor, as berthd found it at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Not enabled; why (shown in Status and `berthd check`).
    Disabled(String),
    /// Enabled; where `apparmor_parser` is (needed to load `berth-default`).
    Enabled {
        /// `apparmor_parser`, if installed.
        parser: Option<PathBuf>,
    },
}

impl Host {
    /// Reads the kernel's switches: the module parameter and securityfs, as runc does.
    pub fn detect() -> Self {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled");
        match enabled {
            Err(_) => Self::Disabled("the kernel has no AppArmor module".into()),
            Ok(v) if !v.starts_with('Y') => {
                Self::Disabled("AppArmor is disabled on the kernel command line".into())
            }
            Ok(_) if !Path::new("/sys/kernel/security/apparmor").is_dir() => Self::Disabled(
                "securityfs is not mounted at /sys/kernel/security (no AppArmor interface)".into(),
            ),
            Ok(_) => Self::Enabled {
                parser: find_parser(),
            },
        }
    }

    /// Whether AppArmor is enabled.
    pub fn enabled(&self) -> bool {
        matches!(self, Self::Enabled { .. })
    }

    /// What Status(verbose) and `berthd check` say about it.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Self::Disabled(why) => serde_json::json!({
                "enabled": false,
                "reason": why,
                "behaviour": "containers run without AppArmor; RuntimeDefault and Localhost profiles are refused (as containerd does)",
            }),
            Self::Enabled { parser } => serde_json::json!({
                "enabled": true,
                "defaultProfile": DEFAULT_PROFILE,
                "parser": parser,
            }),
        }
    }
}

fn find_parser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/sbin", "/usr/sbin"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("apparmor_parser"))
        .find(|p| p.is_file())
}

/// What to confine a process by: `None` for no AppArmor label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No label.
    None,
    /// `berth-default` (loaded on demand).
    Default,
    /// A Localhost profile, which must be loaded.
    Localhost(String),
}

/// The decision table (pure): `what` names the container or pod in errors.
pub fn decide(req: &Request, privileged: bool, host: &Host, what: &str) -> Result<Decision> {
    if let Host::Disabled(why) = host {
        return match req {
            Request::Unset | Request::Unconfined => Ok(Decision::None),
            Request::RuntimeDefault | Request::Localhost(_) => {
                Err(Error::failed_precondition(format!(
                    "{what} asks for AppArmor profile {} but AppArmor is not enabled on this node ({why}); ask for Unconfined, or run the pod on a node with AppArmor",
                    req_name(req)
                )))
            }
        };
    }
    Ok(match req {
        Request::Unconfined => Decision::None,
        // The CRI: privileged containers get no AppArmor confinement by default.
        Request::Unset | Request::RuntimeDefault if privileged => Decision::None,
        Request::Unset | Request::RuntimeDefault => Decision::Default,
        Request::Localhost(name) => Decision::Localhost(name.clone()),
    })
}

fn req_name(req: &Request) -> String {
    match req {
        Request::Unset | Request::RuntimeDefault => "RuntimeDefault".into(),
        Request::Unconfined => "Unconfined".into(),
        Request::Localhost(n) => format!("localhost/{n}"),
    }
}

/// Whether `name` is in the kernel's profile list (`name (enforce)` lines).
pub fn is_listed(profiles: &str, name: &str) -> bool {
    profiles
        .lines()
        .filter_map(|l| l.rsplit_once(" ("))
        .any(|(n, _)| n == name)
}

/// What the default profile is rendered against: which of the AppArmor base policy's
/// files the host has, and berthd's own label (allowed to signal containers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderHost {
    /// `/etc/apparmor.d/abi/3.0` exists.
    pub abi3: bool,
    /// `/etc/apparmor.d/tunables/global` exists (defines `@{PROC}`).
    pub tunables: bool,
    /// `/etc/apparmor.d/abstractions/base` exists.
    pub base: bool,
    /// berthd's AppArmor label (`unconfined` unless it runs under a profile).
    pub daemon: String,
}

impl RenderHost {
    /// Looks at this host.
    pub fn detect() -> Self {
        let has = |f: &str| Path::new("/etc/apparmor.d").join(f).is_file();
        let current = std::fs::read_to_string("/proc/self/attr/current").unwrap_or_default();
        Self {
            abi3: has("abi/3.0"),
            tunables: has("tunables/global"),
            base: has("abstractions/base"),
            daemon: daemon_label(&current),
        }
    }
}

/// berthd's label from `/proc/self/attr/current` (`name (mode)` or just `unconfined`);
/// anything that is not a plain profile name is taken as unconfined.
fn daemon_label(current: &str) -> String {
    let label = current.trim_end_matches(['\n', '\0']);
    let name = label.rsplit_once(" (").map_or(label, |(n, _)| n);
    if validate_name("", name).is_ok() {
        name.to_owned()
    } else {
        "unconfined".to_owned()
    }
}

/// The default profile's text for `host`.
pub fn render(name: &str, host: &RenderHost) -> String {
    let mut preamble = String::new();
    if host.abi3 {
        preamble.push_str("abi <abi/3.0>,\n");
    }
    preamble.push_str(if host.tunables {
        "#include <tunables/global>"
    } else {
        "@{PROC}=/proc/"
    });
    let base = if host.base {
        "  #include <abstractions/base>"
    } else {
        ""
    };
    TEMPLATE
        .lines()
        .filter(|l| !l.starts_with('#') || l.starts_with("#include"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{{preamble}}", &preamble)
        .replace("{{base}}", base)
        .replace("{{daemon}}", &host.daemon)
        .replace("{{name}}", name)
        + "\n"
}

/// The host's AppArmor and the one-at-a-time loading of `berth-default`.
#[derive(Debug)]
pub struct AppArmor {
    host: Host,
    load: Mutex<()>,
}

impl AppArmor {
    /// Detects this host's AppArmor.
    pub fn detect() -> Self {
        let host = Host::detect();
        tracing::info!(apparmor = %host.describe(), "AppArmor");
        Self {
            host,
            load: Mutex::new(()),
        }
    }

    /// The host state.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The label for a process (`process.apparmorProfile`), or `None`. Blocking: reads
    /// the kernel's profile list and may run `apparmor_parser`.
    pub fn resolve(&self, req: &Request, privileged: bool, what: &str) -> Result<Option<String>> {
        match decide(req, privileged, &self.host, what)? {
            Decision::None => Ok(None),
            Decision::Localhost(name) => {
                if is_listed(&read_profiles()?, &name) {
                    Ok(Some(name))
                } else {
                    Err(Error::failed_precondition(format!(
                        "{what}: AppArmor profile {name:?} is not loaded on this node; load it first (apparmor_parser -r /etc/apparmor.d/<its file>) or ask for RuntimeDefault"
                    )))
                }
            }
            Decision::Default => {
                self.ensure_default()?;
                Ok(Some(DEFAULT_PROFILE.to_owned()))
            }
        }
    }

    /// Loads `berth-default` unless the kernel already has it: once per boot of the
    /// node in practice, and again only if it was unloaded.
    fn ensure_default(&self) -> Result<()> {
        let _one_at_a_time = self
            .load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if is_listed(&read_profiles()?, DEFAULT_PROFILE) {
            return Ok(());
        }
        let Host::Enabled {
            parser: Some(parser),
        } = &self.host
        else {
            return Err(Error::failed_precondition(format!(
                "AppArmor profile {DEFAULT_PROFILE} is not loaded and apparmor_parser is not installed to load it; install the apparmor package (Debian/Ubuntu: apt-get install apparmor)"
            )));
        };
        let text = render(DEFAULT_PROFILE, &RenderHost::detect());
        load_profile(parser, &text)?;
        tracing::info!(profile = DEFAULT_PROFILE, "AppArmor default profile loaded");
        Ok(())
    }
}

fn read_profiles() -> Result<String> {
    let mut text = String::new();
    std::fs::File::open(PROFILES_FILE)
        .and_then(|f| f.take(16 << 20).read_to_string(&mut text))
        .map_err(|e| Error::io(format!("reading {PROFILES_FILE}"), e))?;
    Ok(text)
}

/// `apparmor_parser -Kr` (replace, no cache) with the profile on stdin; bounded in
/// time and in the error text kept.
fn load_profile(parser: &Path, text: &str) -> Result<()> {
    let fail = |why: String| {
        Error::internal(format!(
            "loading AppArmor profile {DEFAULT_PROFILE} with {}: {why}",
            parser.display()
        ))
    };
    let mut child = Command::new(parser)
        .arg("-Kr")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            // A parser that vanished after it was found is the host's set-up, not a
            // missing object of the request: NotFound would tell kubelet the
            // container is gone.
            if e.kind() == std::io::ErrorKind::NotFound {
                let parser = parser.display();
                return Error::failed_precondition(format!(
                    "AppArmor profile {DEFAULT_PROFILE} is not loaded and apparmor_parser (\
                     {parser}) cannot be run: {e}; install the apparmor package \
                     (Debian/Ubuntu: apt-get install apparmor)"
                ));
            }
            Error::io(
                format!(
                    "loading AppArmor profile {DEFAULT_PROFILE} with {}",
                    parser.display()
                ),
                e,
            )
        })?;
    let stdin = child.stdin.take();
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(e) = stderr {
            let _ = e.take(8192).read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).trim().to_owned()
    });
    let written = stdin.map(|mut s| s.write_all(text.as_bytes()));
    let deadline = Instant::now() + PARSER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "did not finish within {}s",
                    PARSER_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(format!("{status}: {stderr}")));
    }
    if let Some(Err(e)) = written {
        return Err(fail(format!("writing the profile: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser found at start-up is gone when the profile is loaded: the host's
    /// set-up is at fault (FailedPrecondition, naming apparmor_parser), not a missing
    /// object of the request (NotFound, which kubelet reads as "no such container").
    #[test]
    fn a_missing_parser_is_a_failed_precondition() {
        let dir = tempfile::tempdir().unwrap();
        let parser = dir.path().join("apparmor_parser");
        let e = load_profile(&parser, "profile x {}").expect_err("no parser");
        assert_eq!(
            crate::error::HasKind::kind(&e),
            crate::error::Kind::FailedPrecondition,
            "{e}"
        );
        let m = e.to_string();
        assert!(
            m.contains("apparmor_parser") && m.contains(&parser.display().to_string()),
            "{m}"
        );
    }

    fn sp(ty: ProfileType, r: &str) -> SecurityProfile {
        SecurityProfile {
            profile_type: ty.into(),
            localhost_ref: r.into(),
        }
    }

    #[test]
    fn requests_parse_from_both_fields_and_the_structured_one_wins() {
        let p = |s: Option<SecurityProfile>, d: &str| Request::parse("ctx", s.as_ref(), d);
        assert_eq!(p(None, "").unwrap(), Request::Unset);
        assert_eq!(p(None, "runtime/default").unwrap(), Request::RuntimeDefault);
        assert_eq!(p(None, "unconfined").unwrap(), Request::Unconfined);
        assert_eq!(
            p(None, "localhost/k8s-deny-write").unwrap(),
            Request::Localhost("k8s-deny-write".into())
        );
        assert_eq!(
            p(Some(sp(ProfileType::RuntimeDefault, "")), "").unwrap(),
            Request::RuntimeDefault
        );
        assert_eq!(
            p(Some(sp(ProfileType::Unconfined, "")), "localhost/x").unwrap(),
            Request::Unconfined
        );
        assert_eq!(
            p(Some(sp(ProfileType::Localhost, "localhost/a.b")), "").unwrap(),
            Request::Localhost("a.b".into())
        );
        let e = p(None, "docker-default").unwrap_err();
        assert!(
            matches!(e, Error::Host(crate::error::Error::InvalidArgument(_)))
                && e.to_string().contains("ctx.apparmor_profile"),
            "{e}"
        );
        let e = p(Some(sp(ProfileType::RuntimeDefault, "x")), "").unwrap_err();
        assert!(e.to_string().contains("ctx.apparmor.localhost_ref"), "{e}");
        let bad_type = SecurityProfile {
            profile_type: 7,
            localhost_ref: String::new(),
        };
        assert!(matches!(
            p(Some(bad_type), ""),
            Err(Error::Host(crate::error::Error::InvalidArgument(_)))
        ));
    }

    #[test]
    fn localhost_names_are_one_printable_word() {
        for ok in [
            "k8s-apparmor-example",
            "/usr/sbin/ntpd",
            "snap.lxd.daemon",
            "a//hat",
        ] {
            validate_name("f", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let long = "x".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "a b",
            "a\nchangeprofile unconfined",
            "a\0b",
            "a\tb",
            ":ns:prof",
            "a//&b",
            "unconfined",
            long.as_str(),
        ] {
            let e = validate_name("ctx.apparmor.localhost_ref", bad).unwrap_err();
            assert!(
                matches!(e, Error::Host(crate::error::Error::InvalidArgument(_)))
                    && e.to_string().contains("ctx.apparmor.localhost_ref"),
                "{bad:?}: {e}"
            );
        }
        assert!(Request::parse("c", Some(&sp(ProfileType::Localhost, "")), "").is_err());
        assert!(Request::parse("c", None, "localhost/").is_err());
    }

    #[test]
    fn decision_table_enabled_and_disabled() {
        let on = Host::Enabled { parser: None };
        let off = Host::Disabled("no module".into());
        let local = Request::Localhost("p".into());
        use Decision as D;
        use Request as R;
        // (request, privileged, decision on an AppArmor host)
        let table = [
            (R::Unset, false, D::Default),
            (R::Unset, true, D::None),
            (R::RuntimeDefault, false, D::Default),
            (R::RuntimeDefault, true, D::None),
            (R::Unconfined, false, D::None),
            (R::Unconfined, true, D::None),
            (local.clone(), false, D::Localhost("p".into())),
            (local.clone(), true, D::Localhost("p".into())),
        ];
        for (req, privileged, want) in table {
            assert_eq!(
                decide(&req, privileged, &on, "c").unwrap(),
                want,
                "{req:?} privileged={privileged}"
            );
            // Without AppArmor: nothing to apply, and a request for confinement fails.
            match (&req, decide(&req, privileged, &off, "container x")) {
                (R::Unset | R::Unconfined, Ok(d)) => assert_eq!(d, D::None),
                (
                    R::RuntimeDefault | R::Localhost(_),
                    Err(Error::Host(crate::error::Error::FailedPrecondition(m))),
                ) => {
                    assert!(
                        m.contains("container x") && m.contains("not enabled"),
                        "{m}"
                    );
                }
                (r, other) => panic!("{r:?} on a host without AppArmor: {other:?}"),
            }
        }
    }

    #[test]
    fn loaded_profiles_are_matched_by_whole_name() {
        let list = "berth-default (enforce)\n/usr/sbin/ntpd (enforce)\nlsb_release (complain)\n";
        assert!(is_listed(list, "berth-default"));
        assert!(is_listed(list, "/usr/sbin/ntpd"));
        assert!(is_listed(list, "lsb_release"));
        assert!(!is_listed(list, "berth"));
        assert!(!is_listed(list, "berth-default (enforce)"));
        assert!(!is_listed("", "berth-default"));
    }

    #[test]
    fn daemon_label_comes_from_attr_current() {
        assert_eq!(daemon_label("unconfined\n"), "unconfined");
        assert_eq!(daemon_label("berthd (enforce)\n"), "berthd");
        assert_eq!(daemon_label(""), "unconfined");
        assert_eq!(daemon_label("a b (enforce)"), "unconfined");
    }

    #[test]
    fn default_profile_renders_for_hosts_with_and_without_the_base_policy() {
        let full = RenderHost {
            abi3: true,
            tunables: true,
            base: true,
            daemon: "unconfined".into(),
        };
        let text = render(DEFAULT_PROFILE, &full);
        assert!(!text.contains("{{"), "{text}");
        assert!(
            text.starts_with("abi <abi/3.0>,\n#include <tunables/global>\n"),
            "{text}"
        );
        assert!(text.contains(
            "profile berth-default flags=(attach_disconnected,mediate_deleted) {\n  #include <abstractions/base>\n"
        ));
        for rule in [
            "  deny mount,\n",
            "  deny @{PROC}/sysrq-trigger rwklx,\n",
            "  deny @{PROC}/sys/[^k]** w,\n",
            "  deny /sys/[^f]*/** wklx,\n",
            "  deny /sys/kernel/security/** rwklx,\n",
            "  signal (send,receive) peer=berth-default,\n",
            "  ptrace (trace,read,tracedby,readby) peer=berth-default,\n",
        ] {
            assert!(text.contains(rule), "missing {rule:?}");
        }
        // The template's own comment header does not reach the kernel.
        assert!(!text.contains("Placeholders"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());

        let bare = RenderHost {
            abi3: false,
            tunables: false,
            base: false,
            daemon: "berthd".into(),
        };
        let text = render("other", &bare);
        assert!(text.starts_with("@{PROC}=/proc/\n"), "{text}");
        assert!(!text.contains("#include"));
        assert!(text.contains("signal (receive) peer=berthd,"));
        assert!(text.contains("profile other flags="));
    }
}
