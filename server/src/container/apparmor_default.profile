# Berth's RuntimeDefault AppArmor profile (`berth-default`), rendered by
# server/src/container/apparmor.rs and loaded by berthd with `apparmor_parser -Kr`.
# It gives containers what Docker's and containerd's default profiles give them: the
# usual file, network and capability access (seccomp, capabilities and the masked and
# read-only paths of the OCI spec do the fine-grained work), minus mounting, writes to
# the kernel's knobs in /proc and /sys, the few files there that leak or crash the
# host, and ptrace or signals across the container boundary.
# Placeholders: {{preamble}} {{name}} {{base}} {{daemon}}.
{{preamble}}

profile {{name}} flags=(attach_disconnected,mediate_deleted) {
{{base}}
  file,
  network,
  capability,
  umount,

  # Who may signal a container's processes: the host (unconfined), berthd's own
  # label, the OCI runtimes a pod may be run by, and the container's own processes.
  signal (receive) peer=unconfined,
  signal (receive) peer={{daemon}},
  signal (receive) peer=runc,
  signal (receive) peer=crun,
  signal (send,receive) peer={{name}},

  # Tracing stays inside the profile (the kernel's own checks still apply).
  ptrace (trace,read,tracedby,readby) peer={{name}},

  # No new mounts of any kind, whatever capabilities the pod was given.
  deny mount,

  # /proc: no writes to its top-level files, nor below any top-level entry but the
  # numeric (per-process) ones and /proc/sys.
  deny @{PROC}/* w,
  deny @{PROC}/[^0-9s/]*/** w,
  deny @{PROC}/s[^y/]*/** w,
  deny @{PROC}/sy[^s/]*/** w,
  deny @{PROC}/sys?*/** w,
  # /proc/sys: only the IPC namespace's kernel.shm* may be written.
  deny @{PROC}/sys/[^k]** w,
  deny @{PROC}/sys/kernel/[^s]** w,
  deny @{PROC}/sys/kernel/s[^h]** w,
  deny @{PROC}/sys/kernel/sh[^m]** w,
  # Host-wide switches and memory: neither readable nor writable.
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,

  # /sys: nothing written, locked, linked or mapped executable outside /sys/fs/cgroup.
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  # Firmware tables, power capping (energy side channels) and the LSMs' own files.
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,
}
