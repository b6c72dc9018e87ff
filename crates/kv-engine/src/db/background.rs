//! Background work: flushing frozen memtables and compacting tables.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;

impl Inner {
    pub(super) fn flush_loop(&self) {
        loop {
            let imm = {
                let mut g = self.bg.lock();
                loop {
                    if g.shutdown || self.poisoned.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(m) = self.current().imms.last() {
                        break m.clone();
                    }
                    self.bg_cv.wait(&mut g);
                }
            };
            if let Err(e) = self.flush_memtable(&imm) {
                self.poison(&e);
                return;
            }
            self.notify_bg();
        }
    }

    /// Writes the oldest frozen memtable to an L0 table and installs it.
    fn flush_memtable(&self, imm: &Arc<MemTable>) -> Result<()> {
        let handle = if imm.is_empty() {
            None
        } else {
            let number = self.next_file.fetch_add(1, Ordering::SeqCst);
            let h = build_table(&self.dir, &self.opts, imm, number)?;
            filename::sync_dir(&self.dir).ctx(&self.dir)?;
            Some(h)
        };
        let mut man = self.manifest.lock();
        let sv = self.current();
        // The WAL segment of the next newer memtable is the oldest one still needed.
        let pos = sv
            .imms
            .iter()
            .position(|m| Arc::ptr_eq(m, imm))
            .ok_or_else(|| Error::Poisoned("flushed memtable vanished".into()))?;
        let next_log = if pos == 0 {
            sv.mem.wal_number()
        } else {
            sv.imms[pos - 1].wal_number()
        };
        let added: Vec<(usize, Arc<FileHandle>)> = handle.into_iter().map(|h| (0, h)).collect();
        let edit = VersionEdit {
            log_number: Some(next_log),
            next_file: Some(self.next_file.load(Ordering::SeqCst)),
            last_seq: added.first().map(|(_, h)| h.meta.max_seq),
            deleted: Vec::new(),
            added: added.iter().map(|(l, f)| (*l, f.meta.clone())).collect(),
        };
        self.log_edit(&mut man, &edit)?;
        {
            let mut svw = self.sv.write();
            let imms = svw
                .imms
                .iter()
                .filter(|m| !Arc::ptr_eq(m, imm))
                .cloned()
                .collect();
            *svw = Arc::new(SuperVersion {
                mem: svw.mem.clone(),
                imms,
                version: Arc::new(svw.version.apply(&[], &added)),
            });
        }
        man.log_number = next_log;
        drop(man);
        // The edit is durable: the frozen memtable's log is no longer needed.
        let _ = std::fs::remove_file(filename::wal(&self.dir, imm.wal_number()));
        stats::add(&self.counters.flushes, 1);
        Ok(())
    }

    /// Appends `edit` to the manifest, starting a new manifest first when the
    /// current one has grown large. Poisons on failure.
    fn log_edit(&self, man: &mut ManifestState, edit: &VersionEdit) -> Result<()> {
        let r = if man.manifest.size() > MANIFEST_ROTATE_BYTES {
            self.rotate_manifest(man, edit)
        } else {
            man.manifest.append(edit)
        };
        if let Err(e) = &r {
            self.poison(e);
        }
        r
    }

    fn rotate_manifest(&self, man: &mut ManifestState, edit: &VersionEdit) -> Result<()> {
        let sv = self.current();
        let mut base = VersionEdit {
            log_number: edit.log_number.or(Some(man.log_number)),
            next_file: None,
            last_seq: Some(self.visible_seq.load(Ordering::Acquire)),
            deleted: Vec::new(),
            added: sv
                .version
                .files()
                .filter(|(l, f)| !edit.deleted.contains(&(*l, f.meta.number)))
                .map(|(l, f)| (l, f.meta.clone()))
                .collect(),
        };
        base.added.extend(edit.added.iter().cloned());
        let number = self.next_file.fetch_add(1, Ordering::SeqCst);
        base.next_file = Some(self.next_file.load(Ordering::SeqCst));
        let new = Manifest::create(&self.dir, number, &base)?;
        let old = std::mem::replace(&mut man.number, number);
        man.manifest = new;
        let _ = std::fs::remove_file(self.dir.join(filename::manifest_name(old)));
        Ok(())
    }

    fn smallest_snapshot(&self) -> u64 {
        let snaps = self.snapshots.lock();
        let now = self.visible_seq.load(Ordering::Acquire);
        snaps.keys().next().map_or(now, |&s| s.min(now))
    }

    pub(super) fn compaction_loop(&self) {
        loop {
            {
                let mut g = self.bg.lock();
                loop {
                    if g.shutdown || self.poisoned.load(Ordering::Acquire) {
                        return;
                    }
                    // The version must not be held while sleeping: it keeps
                    // obsolete tables (and their disk space) alive.
                    let due = {
                        let v = self.current().version.clone();
                        let mut pointers = self.compact_pointers.lock().clone();
                        compaction::pick(&v, &self.opts, &mut pointers).is_some()
                    };
                    if due {
                        break;
                    }
                    self.bg_cv.wait(&mut g);
                }
            }
            let _guard = self.compaction_lock.lock();
            let v = self.current().version.clone();
            let picked = compaction::pick(&v, &self.opts, &mut self.compact_pointers.lock());
            if let Some(c) = picked {
                if let Err(e) = self.run_compaction(&c, &v) {
                    self.poison(&e);
                    return;
                }
                self.notify_bg();
            }
        }
    }

    /// Runs `c` (picked from `v`) and installs its outputs.
    pub(super) fn run_compaction(&self, c: &Compaction, v: &Version) -> Result<()> {
        let mut edit = VersionEdit::default();
        let mut added: Vec<(usize, Arc<FileHandle>)> = Vec::new();
        let mut rs = compaction::RunStats::default();
        if c.is_trivial_move() {
            for (level, f) in c.input_files() {
                edit.deleted.push((level, f.meta.number));
                added.push((c.output_level, f.clone()));
            }
        } else {
            let outputs = compaction::run(
                c,
                v,
                &self.dir,
                &self.opts,
                self.smallest_snapshot(),
                || self.next_file.fetch_add(1, Ordering::SeqCst),
                &mut rs,
            )?;
            edit.deleted = c.input_files().map(|(l, f)| (l, f.meta.number)).collect();
            added = outputs.into_iter().map(|f| (c.output_level, f)).collect();
        }
        edit.added = added.iter().map(|(l, f)| (*l, f.meta.clone())).collect();
        let mut man = self.manifest.lock();
        edit.next_file = Some(self.next_file.load(Ordering::SeqCst));
        self.log_edit(&mut man, &edit)?;
        {
            let mut svw = self.sv.write();
            *svw = Arc::new(SuperVersion {
                mem: svw.mem.clone(),
                imms: svw.imms.clone(),
                version: Arc::new(svw.version.apply(&edit.deleted, &added)),
            });
        }
        drop(man);
        if !c.is_trivial_move() {
            for (_, f) in c.input_files() {
                f.mark_obsolete();
            }
        }
        let cs = &self.counters;
        stats::add(&cs.compactions, 1);
        stats::add(&cs.compaction_bytes_read, rs.bytes_read);
        stats::add(&cs.compaction_bytes_written, rs.bytes_written);
        Ok(())
    }
}
