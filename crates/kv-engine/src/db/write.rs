//! The write path: group commit, memtable rotation and write throttling.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;

impl Inner {
    /// Group commit: queue up; the writer at the front leads a group.
    pub(super) fn write(&self, batch: WriteBatch, force_rotate: bool) -> Result<()> {
        self.check_poison()?;
        let me = Arc::new(Writer {
            batch,
            force_rotate,
            result: Mutex::new(None),
        });
        let mut q = self.queue.lock();
        q.push_back(me.clone());
        loop {
            if let Some(r) = me.result.lock().take() {
                return r;
            }
            if q.front().is_some_and(|f| Arc::ptr_eq(f, &me)) {
                break;
            }
            self.queue_cv.wait(&mut q);
        }
        if q.len() == 1 && self.opts.sync == SyncMode::Always {
            // Alone at the front of a synced write: writers just released by
            // the previous group are likely about to queue up. Letting them
            // in first makes the next fsync cover them too instead of
            // alternating between groups of one and groups of many.
            drop(q);
            std::thread::yield_now();
            q = self.queue.lock();
        }
        let mut group = Vec::new();
        let mut bytes = 0;
        for w in q.iter() {
            if !group.is_empty() && bytes + w.batch.rep.len() > MAX_GROUP_BYTES {
                break;
            }
            bytes += w.batch.rep.len();
            group.push(w.clone());
        }
        drop(q);

        let result = self.commit_group(&group);
        let mut q = self.queue.lock();
        for w in &group {
            q.pop_front();
            if !Arc::ptr_eq(w, &me) {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.duplicate()),
                };
                *w.result.lock() = Some(r);
            }
        }
        self.queue_cv.notify_all();
        result
    }

    fn commit_group(&self, group: &[Arc<Writer>]) -> Result<()> {
        self.check_poison()?;
        let force = group.iter().any(|w| w.force_rotate);
        self.make_room(force)?;
        let mut ws = self.wal.lock();
        let WalState {
            wal,
            last_seq,
            buf,
            payload,
        } = &mut *ws;
        buf.clear();
        let mut seq = *last_seq;
        let mut count = 0u64;
        for w in group.iter().filter(|w| !w.batch.is_empty()) {
            payload.clear();
            batch::encode_wal_payload(payload, seq + 1, &w.batch);
            record::encode(buf, payload);
            seq += u64::from(w.batch.count);
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        if seq > MAX_SEQ {
            return Err(Error::InvalidArgument("sequence numbers exhausted".into()));
        }
        if let Err(e) = wal.append(buf) {
            self.poison(&e);
            return Err(e);
        }
        stats::add(&self.counters.wal_writes, 1);
        if self.opts.sync == SyncMode::Always {
            if let Err(e) = wal.sync() {
                self.poison(&e);
                return Err(e);
            }
            stats::add(&self.counters.wal_syncs, 1);
        }
        let mem = self.current().mem.clone();
        let mut s = *last_seq + 1;
        for w in group.iter().filter(|w| !w.batch.is_empty()) {
            for op in batch::decode(&w.batch.rep, w.batch.count).unwrap_or_default() {
                mem.insert(op.key, s, op.kind, op.value);
                s += 1;
            }
        }
        *last_seq = seq;
        self.visible_seq.store(seq, Ordering::Release);
        stats::add(&self.counters.writes, count);
        Ok(())
    }

    /// Makes sure the memtable has room, freezing it when full (or when
    /// `force` and not empty), and holds writers back while flushes or L0
    /// compactions are behind.
    fn make_room(&self, force: bool) -> Result<()> {
        let mut slowed = false;
        loop {
            self.check_poison()?;
            let sv = self.current();
            let l0 = sv.version.levels[0].len();
            if !slowed && l0 >= self.opts.l0_slowdown_trigger && l0 < self.opts.l0_stop_trigger {
                // Give compaction a little of the writers' time instead of
                // stalling them all at once later.
                stats::add(&self.counters.write_slowdowns, 1);
                std::thread::sleep(Duration::from_millis(1));
                slowed = true;
                continue;
            }
            let full = sv.mem.approximate_size() >= self.opts.memtable_size;
            if !(full || (force && !sv.mem.is_empty())) {
                return Ok(());
            }
            if sv.imms.len() >= self.opts.max_immutable_memtables || l0 >= self.opts.l0_stop_trigger
            {
                stats::add(&self.counters.write_stalls, 1);
                let mut g = self.bg.lock();
                let cur = self.current();
                if cur.imms.len() >= self.opts.max_immutable_memtables
                    || cur.version.levels[0].len() >= self.opts.l0_stop_trigger
                {
                    self.bg_cv.wait_for(&mut g, STALL_WAIT);
                }
                continue;
            }
            let number = self.next_file.fetch_add(1, Ordering::SeqCst);
            let new_wal = Wal::create(&self.dir, number)?;
            let mut ws = self.wal.lock();
            let mut old = std::mem::replace(&mut ws.wal, new_wal);
            if self.opts.sync == SyncMode::Never {
                // The frozen memtable's segment is complete; nothing more
                // will be appended to it.
                let _ = old.sync();
            }
            drop(old);
            {
                let mut svw = self.sv.write();
                let mut imms = Vec::with_capacity(svw.imms.len() + 1);
                imms.push(svw.mem.clone());
                imms.extend(svw.imms.iter().cloned());
                *svw = Arc::new(SuperVersion {
                    mem: Arc::new(MemTable::new(number)),
                    imms,
                    version: svw.version.clone(),
                });
            }
            drop(ws);
            self.notify_bg();
            return Ok(());
        }
    }
}
