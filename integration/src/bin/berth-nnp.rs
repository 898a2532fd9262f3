//! The `nnp` program of critest's `nonewprivs` image: installed setuid root, it prints
//! the effective uid it runs with, so a test can tell whether no_new_privs stopped
//! the set-uid escalation.

fn main() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    println!("Effective uid: {euid}");
}
