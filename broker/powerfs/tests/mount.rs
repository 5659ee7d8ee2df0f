//! The durability rules of `powerfs`, checked through a real mount with
//! ordinary `std::fs` calls (the kernel's FUSE client in between). Each test
//! fails, rather than passes, when FUSE cannot be used here.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use powerfs::{LossMode, PowerFs};

fn mount() -> PowerFs {
    PowerFs::mount().expect("the power-loss tests need FUSE (/dev/fuse and root)")
}

fn sync_dir(dir: &Path) {
    File::open(dir).and_then(|d| d.sync_all()).expect("fsync directory");
}

#[test]
fn a_write_that_was_not_fsynced_vanishes() {
    let fs = mount();
    let path = fs.path().join("f");
    let mut f = File::create(&path).expect("create");
    f.write_all(b"durable").expect("write");
    f.sync_data().expect("fdatasync");
    sync_dir(fs.path());
    f.write_all(b" and lost").expect("write");
    drop(f);
    assert_eq!(fs::read(&path).expect("read before"), b"durable and lost");
    let report = fs.power_loss(LossMode::DropUnsynced);
    assert_eq!(fs::read(&path).expect("read after"), b"durable");
    assert_eq!(report.files_with_unsynced_data, 1);
    assert!(fs.stats().fsyncs >= 1 && fs.stats().dir_fsyncs >= 1, "{:?}", fs.stats());
}

#[test]
fn close_is_not_a_durability_point() {
    let fs = mount();
    let path = fs.path().join("f");
    fs::write(&path, b"closed, never synced").expect("write and close");
    sync_dir(fs.path());
    fs.power_loss(LossMode::DropUnsynced);
    assert_eq!(fs::read(&path).expect("read"), b"", "the name is durable, the data is not");
}

#[test]
fn a_created_file_whose_directory_was_not_fsynced_vanishes() {
    let fs = mount();
    fs::create_dir(fs.path().join("d")).expect("mkdir");
    sync_dir(fs.path());
    let path = fs.path().join("d/f");
    let f = File::create(&path).expect("create");
    f.write_all_at(b"data", 0).expect("write");
    f.sync_all().expect("fsync file");
    drop(f);
    fs.power_loss(LossMode::DropUnsynced);
    assert_eq!(fs::read(&path).map_err(|e| e.kind()), Err(ErrorKind::NotFound));
    assert!(fs.path().join("d").is_dir(), "the directory itself was dir-synced");

    let f = File::create(&path).expect("create again");
    f.write_all_at(b"data", 0).expect("write");
    f.sync_all().expect("fsync file");
    sync_dir(&fs.path().join("d"));
    drop(f);
    fs.power_loss(LossMode::DropUnsynced);
    assert_eq!(fs::read(&path).expect("read"), b"data");
}

#[test]
fn rename_is_durable_only_after_its_directory_is_fsynced() {
    let fs = mount();
    let (tmp, cur) = (fs.path().join("cur.tmp"), fs.path().join("cur"));
    for (path, data) in [(&cur, &b"old"[..]), (&tmp, &b"new"[..])] {
        let f = File::create(path).expect("create");
        f.write_all_at(data, 0).expect("write");
        f.sync_all().expect("fsync");
    }
    sync_dir(fs.path());
    fs::rename(&tmp, &cur).expect("rename");
    fs.power_loss(LossMode::DropUnsynced);
    assert_eq!(fs::read(&cur).expect("cur"), b"old", "rename undone");
    assert_eq!(fs::read(&tmp).expect("tmp"), b"new");

    fs::rename(&tmp, &cur).expect("rename");
    sync_dir(fs.path());
    fs.power_loss(LossMode::DropUnsynced);
    assert_eq!(fs::read(&cur).expect("cur"), b"new");
    assert!(!tmp.exists());
}

#[test]
fn unlink_and_rmdir_come_back_without_a_directory_fsync() {
    let fs = mount();
    fs::create_dir_all(fs.path().join("a/b")).expect("mkdir");
    let f = File::create(fs.path().join("a/b/f")).expect("create");
    f.write_all_at(b"x", 0).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    for d in ["a/b", "a", ""] {
        sync_dir(&fs.path().join(d));
    }
    fs::remove_dir_all(fs.path().join("a")).expect("rm -r");
    fs.power_loss(LossMode::DropUnsynced);
    assert_eq!(fs::read(fs.path().join("a/b/f")).expect("back"), b"x");
}

#[test]
fn random_pages_keep_some_unsynced_pages_and_tear_none() {
    let fs = mount();
    let path = fs.path().join("f");
    File::create(&path).expect("create");
    sync_dir(fs.path());
    let mut kept_any = false;
    let mut lost_any = false;
    for seed in 0..8 {
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(0).expect("truncate");
        f.sync_all().expect("fsync");
        for page in 0..16u8 {
            f.write_all_at(&[page + 1; 4096], u64::from(page) * 4096).expect("write");
        }
        drop(f);
        let report = fs.power_loss(LossMode::KeepRandomPages { seed });
        assert_eq!(report.pages_kept + report.pages_lost, 16, "{report:?}");
        let data = fs::read(&path).expect("read");
        assert!(data.is_empty() || data.len() == 16 * 4096, "size is durable or live: {}", data.len());
        for (i, page) in data.chunks(4096).enumerate() {
            let kept = page.iter().all(|&b| b == i as u8 + 1);
            assert!(kept || page.iter().all(|&b| b == 0), "seed {seed}: page {i} torn");
            kept_any |= kept;
            lost_any |= !kept;
        }
    }
    assert!(kept_any && lost_any, "some unsynced pages survive, some do not");
}

#[test]
fn capacity_makes_growing_writes_fail_with_enospc() {
    let fs = mount();
    fs.set_capacity(Some(8192));
    let path = fs.path().join("f");
    let f = File::create(&path).expect("create");
    f.write_all_at(&[1; 8192], 0).expect("fits");
    let err = f.write_all_at(&[1; 1], 8192).expect_err("full");
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
    fs.set_capacity(None);
    f.write_all_at(&[1; 1], 8192).expect("room again");
}

#[test]
fn dropping_the_filesystem_unmounts_it_even_while_a_file_is_open() {
    let fs = mount();
    let path = fs.path().to_path_buf();
    let held = File::create(path.join("held")).expect("create");
    drop(fs);
    assert!(!path.join("held").exists(), "unmounted (lazily, since a file was open)");
    drop(held);
}
