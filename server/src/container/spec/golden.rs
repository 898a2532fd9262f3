//! The `config.json` berthd writes for a few CreateContainer requests, compared with
//! fixtures in `testdata/`. The fixtures were captured from the builder that assembled
//! the spec as untyped JSON (main at f159eee), so a change of the builder that changes
//! what a runtime is told shows up here as a fixture diff to explain.
//!
//! Compared as parsed JSON (key order is not compared). What depends on the machine is
//! replaced by placeholders first: the test's temporary directory by `$T`, the
//! capability set of a privileged container (the host's bounding set) by `$HOST_CAPS`;
//! capability lists are sorted (a capability set has no order).
//!
//! `BERTH_UPDATE_GOLDEN=1 cargo nextest run -p berth-server golden` rewrites the
//! fixtures; review their diff.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_proto::v1::security_profile::ProfileType;
use berth_proto::v1::{
    Capability, ContainerConfig, ContainerMetadata, Device, HugepageLimit, IdMapping, Int64Value,
    KeyValue, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, Mount,
    MountPropagation, NamespaceMode, NamespaceOption, SecurityProfile,
};
use serde_json::Value;

use super::{ImageConfig, PodContext, PodUserNamespace, SpecInput};
use crate::config::CgroupDriver;
use crate::container::cdi;
use crate::host::idmap::IdMapping as PodIdMapping;

/// A scratch tree: the rootfs (with /etc/passwd and /etc/group), host directories to
/// mount, a Localhost seccomp profile and a CDI spec directory.
struct Scratch {
    _dir: tempfile::TempDir,
    /// Canonical path of the tree (what `$T` stands for).
    root: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical tempdir");
        let w = |p: &str, text: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        w(
            "rootfs/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        );
        w(
            "rootfs/etc/group",
            "root:x:0:\napp:x:1000:\nvideo:x:44:app\n",
        );
        for d in [
            "host/data",
            "host/cache",
            "host/shared",
            "host/ro",
            "cdi-lib",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::os::unix::fs::symlink(root.join("host/data"), root.join("host/data-link"))
            .expect("symlink");
        // Rules with and without capability conditions, an errno, and argument filters
        // with and without valueTwo; no arch or kernel conditions (they vary by host).
        w(
            "seccomp.json",
            r#"{
  "defaultAction": "SCMP_ACT_ERRNO",
  "defaultErrnoRet": 38,
  "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
  "syscalls": [
    {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
    {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
    {"names": ["reboot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_BOOT"]}},
    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
    {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"},
              {"index": 1, "value": 255, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]}
  ]
}"#,
        );
        // Device nodes (one remapped, one FIFO), a mount, environment, hooks and a
        // group: every kind of edit berthd applies.
        w(
            "cdi/vendor.yaml",
            &format!(
                r#"
cdiVersion: "0.6.0"
kind: vendor.example/gpu
devices:
  - name: "0"
    containerEdits:
      env: ["GPU=0", "PATH=/cdi/bin"]
      deviceNodes:
        - path: /dev/gpu0
          hostPath: /dev/zero
          permissions: rw
        - path: /dev/gpu-events
          type: p
      mounts:
        - hostPath: {lib}
          containerPath: /usr/lib/gpu
          options: [ro, nosuid, nodev]
      hooks:
        - hookName: createContainer
          path: /usr/bin/gpu-hook
          args: [gpu-hook, setup]
          env: [HOOK=1]
          timeout: 5
        - hookName: prestart
          path: /usr/bin/gpu-prestart
containerEdits:
  env: ["VENDOR=example"]
  additionalGids: [44, 2000]
"#,
                lib = root.join("cdi-lib").display()
            ),
        );
        Self { _dir: dir, root }
    }

    fn path(&self, p: &str) -> String {
        self.root.join(p).display().to_string()
    }
}

fn pod(cgroup_parent: &str) -> PodContext {
    PodContext {
        sandbox_id: "pod1".into(),
        sandbox_name: "web-0".into(),
        netns: Some("/run/berth/ns/pod1/net".into()),
        ipcns: Some("/run/berth/ns/pod1/ipc".into()),
        utsns: Some("/run/berth/ns/pod1/uts".into()),
        shm: Some("/var/lib/berth/pods/pod1/shm".into()),
        resolv_conf: "/var/lib/berth/pods/pod1/resolv.conf".into(),
        hosts: "/var/lib/berth/pods/pod1/hosts".into(),
        hostname: "/var/lib/berth/pods/pod1/hostname".into(),
        hostname_value: "web-0".into(),
        cgroup_parent: cgroup_parent.into(),
        pod_name: "web-0".into(),
        pod_namespace: "default".into(),
        pod_uid: "u1".into(),
        ..Default::default()
    }
}

fn metadata() -> Option<ContainerMetadata> {
    Some(ContainerMetadata {
        name: "app".into(),
        attempt: 1,
    })
}

/// The spec as container/create.rs writes it: built, the CDI edits applied, serialised.
fn config_json(input: &SpecInput<'_>, cdi_devices: &[&str], cdi_dir: &Path) -> Value {
    let names: Vec<String> = cdi_devices.iter().map(|s| (*s).to_owned()).collect();
    let injection = cdi::resolve(&[cdi_dir.to_owned()], &names).expect("CDI resolves");
    let mut spec = super::build(input).expect("spec builds");
    injection.apply(&mut spec);
    let bytes = serde_json::to_vec(&spec).expect("serialises");
    serde_json::from_slice(&bytes).expect("config.json parses")
}

/// A non-privileged container in a pod with its own user namespace and a shared PID
/// namespace, asking for nearly everything the CRI lets it ask for.
fn rich(s: &Scratch) -> Value {
    let sc = LinuxContainerSecurityContext {
        capabilities: Some(Capability {
            add_capabilities: vec!["NET_ADMIN".into(), "sys_ptrace".into()],
            drop_capabilities: vec!["CAP_MKNOD".into(), "NET_RAW".into()],
            add_ambient_capabilities: vec![],
        }),
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Pod.into(),
            ..Default::default()
        }),
        run_as_username: "app".into(),
        run_as_group: Some(Int64Value { value: 1000 }),
        supplemental_groups: vec![3000, 44],
        readonly_rootfs: true,
        no_new_privs: true,
        masked_paths: vec!["/proc/kcore".into(), "/sys/firmware".into()],
        readonly_paths: vec!["/proc/sys".into()],
        seccomp: Some(SecurityProfile {
            profile_type: ProfileType::Localhost.into(),
            localhost_ref: s.path("seccomp.json"),
        }),
        ..Default::default()
    };
    let mapping = |container_id, host_id, length| IdMapping {
        host_id,
        container_id,
        length,
    };
    let config = ContainerConfig {
        metadata: metadata(),
        command: vec!["/app/server".into()],
        args: vec!["--port".into(), "8080".into()],
        working_dir: "/srv".into(),
        envs: vec![
            KeyValue {
                key: "MODE".into(),
                value: b"prod".to_vec(),
            },
            KeyValue {
                key: "HOME".into(),
                value: b"/data".to_vec(),
            },
        ],
        mounts: vec![
            Mount {
                container_path: "/data/".into(),
                host_path: s.path("host/data-link"),
                propagation: MountPropagation::PropagationHostToContainer.into(),
                mount_options: vec!["nodev".into(), "noexec".into()],
                ..Default::default()
            },
            Mount {
                container_path: "/cache".into(),
                host_path: s.path("host/cache"),
                uid_mappings: vec![mapping(0, 200_000, 65536)],
                gid_mappings: vec![mapping(0, 300_000, 65536)],
                ..Default::default()
            },
            Mount {
                container_path: "/etc/hosts".into(),
                host_path: s.path("host/ro"),
                readonly: true,
                ..Default::default()
            },
        ],
        devices: vec![
            Device {
                container_path: "/dev/xnull".into(),
                host_path: "/dev/null".into(),
                permissions: "rw".into(),
            },
            Device {
                container_path: String::new(),
                host_path: "/dev/zero".into(),
                permissions: String::new(),
            },
        ],
        labels: HashMap::from([("io.kubernetes.container.name".into(), "app".into())]),
        annotations: HashMap::from([
            ("example.com/owner".into(), "team-a".into()),
            (
                "io.berth.allow-degraded-devices".into(),
                "forged by the pod".into(),
            ),
        ]),
        tty: true,
        stdin: true,
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 256 << 20,
                memory_swap_limit_in_bytes: 512 << 20,
                oom_score_adj: 900,
                cpuset_cpus: "0-1".into(),
                cpuset_mems: "0".into(),
                hugepage_limits: vec![HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 4 << 20,
                }],
                unified: HashMap::from([
                    ("memory.high".into(), "200000000".into()),
                    ("pids.max".into(), "100".into()),
                ]),
            }),
            security_context: Some(sc),
        }),
        ..Default::default()
    };
    let image = ImageConfig {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["ignored".into()],
        env: vec!["PATH=/app/bin:/bin".into(), "LANG=C.UTF-8".into()],
        user: "root".into(),
        working_dir: "/".into(),
    };
    let mut pod = pod("/kubepods/burstable/podu1");
    pod.pidns = Some("/proc/4242/ns/pid".into());
    pod.userns = Some(PodUserNamespace {
        path: "/run/berth/ns/pod1/user".into(),
        uids: vec![PodIdMapping {
            container_id: 0,
            host_id: 100_000,
            length: 65536,
        }],
        gids: vec![PodIdMapping {
            container_id: 0,
            host_id: 100_000,
            length: 65536,
        }],
    });
    let rootfs = s.root.join("rootfs");
    let input = SpecInput {
        id: "ctr-rich",
        config: &config,
        image: &image,
        image_name: "registry.example/app:1.0",
        rootfs: &rootfs,
        pod: &pod,
        cgroup_driver: CgroupDriver::Cgroupfs,
        apparmor_profile: Some("localhost/berth-test"),
        degraded_device_filter: true,
    };
    config_json(&input, &["vendor.example/gpu=0"], &s.root.join("cdi"))
}

/// A privileged container with the host's PID namespace and network, the systemd
/// driver, a bidirectional mount and a recursively read-only one.
fn privileged(s: &Scratch) -> Value {
    let config = ContainerConfig {
        metadata: metadata(),
        mounts: vec![
            Mount {
                container_path: "/shared".into(),
                host_path: s.path("host/shared"),
                propagation: MountPropagation::PropagationBidirectional.into(),
                ..Default::default()
            },
            Mount {
                container_path: "/ro".into(),
                host_path: s.path("host/ro"),
                readonly: true,
                recursive_read_only: true,
                ..Default::default()
            },
        ],
        devices: vec![Device {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        }],
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                privileged: true,
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Node.into(),
                    network: NamespaceMode::Node.into(),
                    ..Default::default()
                }),
                seccomp: Some(SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault.into(),
                    localhost_ref: String::new(),
                }),
                run_as_user: Some(Int64Value { value: 0 }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let image = ImageConfig {
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let mut pod = pod("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podu1.slice");
    pod.netns = None;
    pod.host_pid = true;
    pod.shm = None;
    let rootfs = s.root.join("rootfs");
    let input = SpecInput {
        id: "ctr-priv",
        config: &config,
        image: &image,
        image_name: "busybox",
        rootfs: &rootfs,
        pod: &pod,
        cgroup_driver: CgroupDriver::Systemd,
        apparmor_profile: None,
        degraded_device_filter: false,
    };
    config_json(&input, &[], &s.root.join("cdi"))
}

/// The plainest container: the image's command, its own PID namespace, no profile.
fn minimal(s: &Scratch) -> Value {
    let config = ContainerConfig {
        metadata: metadata(),
        ..Default::default()
    };
    let image = ImageConfig {
        entrypoint: vec!["/bin/sh".into()],
        cmd: vec!["-c".into(), "sleep 1".into()],
        ..Default::default()
    };
    let pod = pod("");
    let rootfs = s.root.join("rootfs");
    let input = SpecInput {
        id: "ctr-min",
        config: &config,
        image: &image,
        image_name: "busybox",
        rootfs: &rootfs,
        pod: &pod,
        cgroup_driver: CgroupDriver::Cgroupfs,
        apparmor_profile: None,
        degraded_device_filter: false,
    };
    config_json(&input, &[], &s.root.join("cdi"))
}

/// Replaces what varies between machines with placeholders (see the module doc).
fn normalize(v: Value, tmp: &Path) -> Value {
    let tmp = tmp.display().to_string();
    let mut host_caps: Vec<String> = super::host_capabilities().to_vec();
    host_caps.sort();
    fn walk(v: Value, tmp: &str, host_caps: &[String], key: &str) -> Value {
        match v {
            Value::String(s) => Value::String(s.replace(tmp, "$T")),
            Value::Array(items) => {
                let mut items: Vec<Value> = items
                    .into_iter()
                    .map(|i| walk(i, tmp, host_caps, ""))
                    .collect();
                if matches!(
                    key,
                    "bounding" | "effective" | "permitted" | "inheritable" | "ambient"
                ) {
                    items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                    let names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                    if names == host_caps && names.contains(&"CAP_SYS_ADMIN") {
                        return Value::String("$HOST_CAPS".into());
                    }
                }
                Value::Array(items)
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = walk(v, tmp, host_caps, &k);
                        (k, v)
                    })
                    .collect(),
            ),
            other => other,
        }
    }
    walk(v, &tmp, &host_caps, "")
}

fn check(name: &str, got: Value, s: &Scratch) {
    let got = normalize(got, &s.root);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/container/spec/testdata")
        .join(format!("{name}.json"));
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
        let mut text = serde_json::to_string_pretty(&got).expect("serialises");
        text.push('\n');
        std::fs::write(&fixture, text).expect("writing the fixture");
        return;
    }
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(&fixture).unwrap_or_else(|e| panic!("{}: {e}", fixture.display())),
    )
    .expect("fixture parses");
    if got != want {
        panic!(
            "{name}: the spec differs from {}; got:\n{}",
            fixture.display(),
            serde_json::to_string_pretty(&got).expect("serialises")
        );
    }
}

/// The spec of a container that asks for users, capabilities, a Localhost seccomp
/// profile, masked and read-only paths, mounts with propagation and idmaps, devices,
/// resources, AppArmor, CDI edits (hooks included) in a pod with user and PID
/// namespaces is the one the fixture holds.
#[test]
fn rich_container_spec_matches_the_fixture() {
    let s = Scratch::new();
    assert!(
        super::host_capabilities().contains(&"CAP_NET_ADMIN".to_owned())
            && super::host_capabilities().contains(&"CAP_SYS_PTRACE".to_owned()),
        "the fixture adds NET_ADMIN and SYS_PTRACE, which need this process's bounding set to hold them"
    );
    check("rich", rich(&s), &s);
}

/// A privileged container's spec (host PID and network, systemd cgroup path, all
/// capabilities, no seccomp, no masked paths, writable /sys) is the fixture's.
#[test]
fn privileged_container_spec_matches_the_fixture() {
    let s = Scratch::new();
    check("privileged", privileged(&s), &s);
}

/// The plainest container's spec (defaults everywhere) is the fixture's.
#[test]
fn minimal_container_spec_matches_the_fixture() {
    let s = Scratch::new();
    check("minimal", minimal(&s), &s);
}
