//! The images critest's specs pull, and the nginx/httpd/nonewprivs server images.

use std::path::Path;

use anyhow::{Context, bail};

use super::image::host_arch;
use super::{
    BuiltImage, DYNAMIC_BUSYBOX, Group, ImageBuilder, LayerBuilder, User, busybox_layer,
    busybox_layer_from,
};

#[derive(Clone, Debug)]
pub struct Published {
    /// Full upstream repository, e.g. `gcr.io/k8s-staging-cri-tools/test-image-tags`.
    pub upstream: String,
    pub tags: Vec<String>,
    pub image: BuiltImage,
}

impl Published {
    /// The repository path inside a registry (the upstream without its host).
    pub fn path(&self) -> &str {
        self.upstream
            .split_once('/')
            .map_or(self.upstream.as_str(), |(_, p)| p)
    }
}

fn published(upstream: &str, tags: &[&str], image: BuiltImage) -> Published {
    Published {
        upstream: upstream.to_owned(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        image,
    }
}

/// The images critest's image specs pull (cri-tools `pkg/validate/consts.go`), plus
/// the default busybox and `pause:3.9` under both registry names. Built from the
/// busybox base (shared by all, so one snapshot), each with its distinguishing file
/// or USER. Not included: nginx, httpd, nonewprivs and hostnet-nginx (they need
/// more than busybox), and `test-image-digest` (its upstream digest cannot be
/// reproduced). The busybox is Debian's dynamically linked one, whose `sh` execs
/// commands (the MaskedPaths spec needs a masked `/bin/ls` to fail to run).
pub fn critest_images() -> anyhow::Result<Vec<Published>> {
    const STAGING: &str = "gcr.io/k8s-staging-cri-tools";
    let base = busybox_layer_from(
        Path::new(DYNAMIC_BUSYBOX),
        &[User {
            name: "default-user".into(),
            uid: 1000,
            gid: 1000,
        }],
        &[
            Group {
                name: "default-user".into(),
                gid: 1000,
                members: vec![],
            },
            Group {
                name: "group-defined-in-image".into(),
                gid: 50000,
                members: vec!["default-user".into()],
            },
        ],
    )?;
    let busybox = || ImageBuilder::new().layer(base.clone()).cmd(["sh"]);
    let with_file = |name: &str| -> anyhow::Result<BuiltImage> {
        busybox()
            .layer(LayerBuilder::new().file(&format!("/{name}"), format!("{name}\n"), 0o644))
            .build()
    };
    let mut out = vec![
        published(
            "registry.k8s.io/e2e-test-images/busybox",
            &["1.29-2"],
            // Debian's busybox lacks pgrep and ipcs, which the specs run
            // inside containers: take procps' and util-linux's.
            busybox()
                .layer(
                    LayerBuilder::new()
                        .host_binary("/usr/bin/pgrep")?
                        .host_binary("/usr/bin/ipcs")?,
                )
                .build()?,
        ),
        published(
            &format!("{STAGING}/test-image-latest"),
            &["latest"],
            with_file("test-image-latest")?,
        ),
        published(
            &format!("{STAGING}/test-image-tag"),
            &["test", "all"],
            with_file("test-image-tag")?,
        ),
        published(
            &format!("{STAGING}/test-image-tags"),
            &["1", "2", "3"],
            with_file("test-image-tags")?,
        ),
    ];
    for n in 1..=3 {
        let name = format!("test-image-{n}");
        out.push(published(
            &format!("{STAGING}/{name}"),
            &["latest"],
            with_file(&name)?,
        ));
    }
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
        ("test-image-predefined-group", "1000"),
    ] {
        out.push(published(
            &format!("{STAGING}/{name}"),
            &["latest"],
            busybox().user(user).build()?,
        ));
    }
    // The pause image: never run by the image specs, only pulled under two names.
    let pause = busybox().entrypoint(["/bin/sleep", "2147483647"]).build()?;
    out.push(published("registry.k8s.io/pause", &["3.9"], pause.clone()));
    out.push(published("k8s.gcr.io/pause", &["3.9"], pause));
    Ok(out)
}

/// Debian's nginx binary (package `nginx`).
pub const NGINX: &str = "/usr/sbin/nginx";
/// Debian's Apache binary (package `apache2-bin`).
pub const APACHE: &str = "/usr/sbin/apache2";
/// Where Debian keeps Apache's loadable modules.
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

/// The `berth-nnp` test program built by cargo next to the running test binary
/// (`$BERTH_NNP_BIN` overrides).
pub fn nnp_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_NNP_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("berth-nnp");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "berth-nnp not found next to {}; build it with `cargo build -p berth-integration --bins` or set BERTH_NNP_BIN",
        exe.display()
    )
}

/// nginx from Debian on the busybox base, started by its ENTRYPOINT in the
/// foreground (so PID 1's command line reads `nginx: master process ...`), writing
/// `/var/run/nginx.pid` and serving a page on `port`.
pub fn nginx_image(base: &LayerBuilder, port: u16) -> anyhow::Result<BuiltImage> {
    let conf = format!(
        "user nobody nogroup;\nworker_processes 1;\npid /var/run/nginx.pid;\n\
         error_log /dev/stderr notice;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log /dev/stdout;\n  server {{\n    listen {port};\n\
         \x20   root /usr/share/nginx/html;\n    index index.html;\n  }}\n}}\n"
    );
    ImageBuilder::new()
        .layer(base.clone())
        .layer(
            LayerBuilder::new()
                .host_binary(NGINX)?
                .dir("etc/nginx", 0o755)
                .file("etc/nginx/nginx.conf", conf, 0o644)
                .dir("var/log/nginx", 0o755)
                .dir("var/lib/nginx", 0o755)
                .dir("usr/share/nginx/html", 0o755)
                .file(
                    "usr/share/nginx/html/index.html",
                    "<html><head><title>Welcome to nginx!</title></head><body>Welcome to nginx!</body></html>\n",
                    0o644,
                ),
        )
        .entrypoint(["nginx", "-g", "daemon off;"])
        .cmd(Vec::<String>::new())
        .expose(&format!("{port}/tcp"))
        .stop_signal("SIGQUIT")
        .build()
}

/// Apache httpd from Debian on the busybox base, run as `httpd -DFOREGROUND` so its
/// log says `Command line: 'httpd -D FOREGROUND'` as the upstream image's does.
pub fn httpd_image(base: &LayerBuilder) -> anyhow::Result<BuiltImage> {
    let mut layer = LayerBuilder::new().host_binary(APACHE)?;
    let modules = ["mod_mpm_event.so", "mod_authz_core.so", "mod_dir.so"];
    for m in modules {
        layer = layer.host_binary(&format!("{APACHE_MODULES}/{m}"))?;
    }
    let conf = format!(
        "ServerRoot /etc/apache2\nDefaultRuntimeDir /var/run/apache2\nPidFile /var/run/apache2/httpd.pid\n\
         Mutex file:/var/run/apache2 default\nListen 80\n\
         LoadModule mpm_event_module {APACHE_MODULES}/mod_mpm_event.so\n\
         LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so\n\
         LoadModule dir_module {APACHE_MODULES}/mod_dir.so\n\
         User www-data\nGroup www-data\nServerName localhost\n\
         ErrorLog /proc/self/fd/2\nLogLevel info\n\
         DocumentRoot /usr/local/apache2/htdocs\n\
         <Directory /usr/local/apache2/htdocs>\n  Require all granted\n</Directory>\n\
         DirectoryIndex index.html\n"
    );
    let layer = layer
        .hardlink("usr/local/bin/httpd", APACHE)
        .file(
            "usr/local/bin/httpd-foreground",
            "#!/bin/sh\nset -e\nrm -f /var/run/apache2/httpd.pid\n# A full path: busybox sh would prefer its own httpd applet.\nexec /usr/local/bin/httpd -DFOREGROUND \"$@\"\n",
            0o755,
        )
        .dir("etc/apache2", 0o755)
        .file("etc/apache2/apache2.conf", conf, 0o644)
        .dir("var/run/apache2", 0o755)
        .dir("usr/local/apache2/htdocs", 0o755)
        .file(
            "usr/local/apache2/htdocs/index.html",
            "<html><body><h1>It works!</h1></body></html>\n",
            0o644,
        );
    ImageBuilder::new()
        .layer(base.clone())
        .layer(layer)
        .cmd(["httpd-foreground"])
        .expose("80/tcp")
        .stop_signal("SIGWINCH")
        .build()
}

/// critest's `nonewprivs` image: `/usr/local/bin/nnp` set-uid root, `CMD ["nnp"]`.
pub fn nonewprivs_image(base: &LayerBuilder) -> anyhow::Result<BuiltImage> {
    let nnp = nnp_binary()?;
    let mut layer = LayerBuilder::new().host_file("usr/local/bin/nnp", &nnp, 0o4755)?;
    // The program is dynamically linked: bring its loader and libraries.
    let probe = LayerBuilder::new().host_binary(&nnp.display().to_string())?;
    for e in probe.entries.into_iter().skip(1) {
        layer.entries.push(e);
    }
    ImageBuilder::new()
        .layer(base.clone())
        .layer(layer)
        .cmd(["nnp"])
        .build()
}

/// The critest images that need more than busybox: nginx (pod port 80),
/// hostnet-nginx (port 12003), httpd and nonewprivs. Needs Debian's `nginx` and
/// `apache2-bin` and the `berth-nnp` binary of this crate.
pub fn critest_server_images() -> anyhow::Result<Vec<Published>> {
    let base = busybox_layer(&[], &[])?;
    Ok(vec![
        published(
            "registry.k8s.io/e2e-test-images/nginx",
            &["1.14-2"],
            nginx_image(&base, 80)?,
        ),
        published(
            &format!("gcr.io/k8s-staging-cri-tools/hostnet-nginx-{}", host_arch()),
            &["latest"],
            nginx_image(&base, 12003)?,
        ),
        published(
            "registry.k8s.io/e2e-test-images/httpd",
            &["2.4.39-4"],
            httpd_image(&base)?,
        ),
        published(
            "registry.k8s.io/e2e-test-images/nonewprivs",
            &["1.3"],
            nonewprivs_image(&base)?,
        ),
    ])
}
