//! How the binaries' allocator (glibc's malloc) keeps freed memory.
//!
//! **Why.** A PutRecords of 500 records of 1 KiB, or a subscriber's event
//! as large, is one buffer of about 500 KiB, often freed on another thread
//! than the one that allocated it (a tokio worker decodes, a shard writer
//! drops). glibc's default thresholds follow the largest block freed (an
//! arena is trimmed once twice that is free at its top, about 1 MiB here),
//! so arenas are trimmed (`madvise`) as soon as a few such buffers are
//! free at once and the next ones fault their pages in again. In `perf
//! record` of `stream-bench e2e --rate 250000`, page faults were 9.8% of
//! the process's samples and `madvise` 2.9%.
//!
//! **What.** [`configure`] fixes the thresholds: blocks under
//! [`MMAP_THRESHOLD_BYTES`] come from the arenas (a batch frame or
//! request of up to 4 MiB; larger ones are mapped and unmapped on their
//! own), and an arena gives memory back only once
//! [`TRIM_THRESHOLD_BYTES`] is free at its top. The cost is up to that
//! much free memory kept per arena after a burst; `subscriber_memory`
//! (20 stalled subscribers) and the idle-shards benchmark measure it. The
//! gain and its measurement are in `benches/README.md`.
//!
//! An operator who tunes glibc wins: with `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_` or any `GLIBC_TUNABLES` in the environment,
//! [`configure`] changes nothing (`GLIBC_TUNABLES=glibc.malloc.check=0`
//! runs a binary on glibc's defaults, as the benchmarks' comparison does).

/// Blocks at least this large are mapped on their own and unmapped on free.
pub const MMAP_THRESHOLD_BYTES: usize = 4 << 20;
/// An arena gives memory back once this much is free at its top.
pub const TRIM_THRESHOLD_BYTES: usize = 8 << 20;

/// Sets glibc's thresholds (nothing with another C library, or when the
/// environment sets them). Call it at the start of `main`.
pub fn configure() {
    let tuned_by_operator = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    if !tuned_by_operator {
        set_thresholds();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_thresholds() {
    // SAFETY: `mallopt` takes two integers and changes allocator
    // parameters under glibc's own arena lock; it may be called at any
    // time from any thread, and the values are in its accepted range
    // (the mmap threshold at most 32 MiB on 64-bit).
    let set = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int)
            & libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES as libc::c_int)
    };
    // mallopt refuses only values out of its range, which these are not.
    debug_assert_eq!(set, 1, "glibc refused the malloc thresholds");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use std::process::Command;

    /// Minor page faults of the calling thread so far.
    fn thread_minor_faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read /proc/thread-self/stat");
        // After the command name's closing parenthesis, minflt is the 8th field.
        let after = &stat[stat.rfind(')').expect("a command name") + 2..];
        after.split(' ').nth(7).and_then(|v| v.parse().ok()).expect("minflt")
    }

    /// The broker's pattern in small: eight 512 KiB buffers live at once,
    /// written, then all freed; 40 times on one thread. Prints the faults.
    #[test]
    #[ignore = "run by the test below in a fresh process"]
    fn probe() {
        if std::env::var_os("ALLOCATOR_PROBE_TUNED").is_some() {
            super::configure();
        }
        let handle = std::thread::spawn(|| {
            let before = thread_minor_faults();
            for round in 0..40u8 {
                let bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![round; 512 * 1024]).collect();
                std::hint::black_box(&bufs);
            }
            thread_minor_faults() - before
        });
        println!("ALLOCATOR_PROBE_FAULTS={}", handle.join().expect("probe thread"));
    }

    fn probe_faults(tuned: bool) -> u64 {
        let exe = std::env::current_exe().expect("test executable");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", "allocator::tests::probe", "--ignored", "--nocapture", "--test-threads=1"]);
        for k in ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "ALLOCATOR_PROBE_TUNED"] {
            cmd.env_remove(k);
        }
        if tuned {
            cmd.env("ALLOCATOR_PROBE_TUNED", "1");
        }
        let out = cmd.output().expect("run the probe");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "probe failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        // libtest prints the line after the test's name.
        stdout
            .split("ALLOCATOR_PROBE_FAULTS=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no fault count in: {stdout}"))
    }

    /// With glibc's defaults each round's freed buffers are trimmed and
    /// faulted in again (about 1,000 faults a round; the negative
    /// control); with [`super::configure`] they are reused after the first.
    #[test]
    fn freed_buffers_are_reused_instead_of_faulted_in_again() {
        let (plain, tuned) = (probe_faults(false), probe_faults(true));
        println!("page faults of 40 rounds: {plain} with glibc's defaults, {tuned} with the thresholds set");
        // 8 x 512 KiB is 1,024 pages: what the first round faults in either way.
        assert!(plain > 10 * 1024, "glibc's defaults faulted only {plain} pages: the probe no longer shows trimming");
        assert!(tuned < 3 * 1024, "{tuned} page faults with the thresholds set (first round alone: about 1,024)");
    }
}
