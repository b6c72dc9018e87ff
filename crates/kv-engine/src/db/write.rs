//! The write path: group commit, memtable rotation and write throttling.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use parking_lot::MutexGuard;

use super::*;

impl Inner {
    /// Group commit: queue up; the writer at the front leads a group.
    pub(super) fn write(&self, batch: WriteBatch, force_rotate: bool) -> Result<()> {
        self.check_poison()?;
        let me = Arc::new(Writer {
            batch,
            force_rotate,
            result: Mutex::new(None),
            signalled: AtomicBool::new(false),
            thread: std::thread::current(),
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
            // Woken by the leader that finished our group, or that made us
            // the front of the queue; a spurious wake-up just loops.
            drop(q);
            self.await_turn(&me);
            q = self.queue.lock();
        }
        if self.opts.sync == SyncMode::Always {
            q = self.gather(q);
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
        // Writers in this group plus those that queued up behind it: how
        // many the next group can expect once this one's writers return.
        self.group_peak.store(q.len(), Ordering::Relaxed);
        let mut wake = Vec::with_capacity(group.len());
        // The next leader first: it can start gathering its group while the
        // others are being woken.
        if let Some(next) = q.get(group.len()) {
            next.signalled.store(true, Ordering::Release);
            wake.push(next.thread.clone());
        }
        for w in &group {
            q.pop_front();
            if !Arc::ptr_eq(w, &me) {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.duplicate()),
                };
                *w.result.lock() = Some(r);
                w.signalled.store(true, Ordering::Release);
                wake.push(w.thread.clone());
            }
        }
        drop(q);
        // Wake-ups are system calls (for writers that are parked): make them
        // without holding the queue.
        for t in wake {
            t.unpark();
        }
        result
    }

    /// Before a synced group starts, gives writers released by the previous
    /// group a moment to queue up again, so that one fsync covers them all
    /// instead of groups alternating between few and many. Waits only while
    /// fewer writers are queued than were active around the previous group,
    /// and at most half the duration of the previous fsync: a lone writer
    /// never waits.
    fn gather<'a>(
        &'a self,
        mut q: MutexGuard<'a, VecDeque<Arc<Writer>>>,
    ) -> MutexGuard<'a, VecDeque<Arc<Writer>>> {
        let expected = self.group_peak.load(Ordering::Relaxed);
        if q.len() >= expected {
            return q;
        }
        let budget = Duration::from_nanos(self.last_sync_nanos.load(Ordering::Relaxed) / 2)
            .min(MAX_GATHER_WAIT);
        let deadline = Instant::now() + budget;
        while q.len() < expected && Instant::now() < deadline {
            drop(q);
            std::thread::yield_now();
            q = self.queue.lock();
        }
        q
    }

    /// Waits until the leader signals `me` (its result is in, or it is now
    /// at the front).
    ///
    /// In synced mode a writer first yields the CPU in a loop, for up to the
    /// longest its group should take, a gather window (at most half an
    /// fsync, see [`Inner::gather`]) plus one fsync, going by the last
    /// fsync (and at most [`MAX_YIELD_WAIT`]); it parks only after that. A
    /// writer still running when its group's fsync ends queues its
    /// next write at once, where a parked one first needs a wake-up system
    /// call and a trip through the scheduler, time the next group spends
    /// waiting for it. A yield that takes [`SLOW_YIELD`] or longer means
    /// other threads want the CPU, and the writer parks at once. (RocksDB's
    /// write threads yield adaptively before blocking for the same reason.)
    fn await_turn(&self, me: &Writer) {
        if self.opts.sync == SyncMode::Always {
            let sync = self.last_sync_nanos.load(Ordering::Relaxed);
            let budget = Duration::from_nanos(sync.saturating_add(sync / 2)).min(MAX_YIELD_WAIT);
            let start = Instant::now();
            let mut now = start;
            while !me.signalled.load(Ordering::Acquire) && now - start < budget {
                std::thread::yield_now();
                let after = Instant::now();
                if after - now >= SLOW_YIELD {
                    break;
                }
                now = after;
            }
        }
        if !me.signalled.load(Ordering::Acquire) {
            // An unpark that raced with this check is not lost: it makes
            // the park return at once.
            std::thread::park();
        }
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
        wal::begin_group(buf);
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
        if let Err(e) = wal.append_group(buf) {
            self.poison(&e);
            return Err(e);
        }
        stats::add(&self.counters.wal_writes, 1);
        if self.opts.sync == SyncMode::Always {
            let started = Instant::now();
            if let Err(e) = wal.sync() {
                self.poison(&e);
                return Err(e);
            }
            let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last_sync_nanos.store(took, Ordering::Relaxed);
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
            // A failed create may be a failed fsync (of the directory or
            // the segment header): like every fsync failure, never retried.
            let new_wal = Wal::create(&self.dir, number).inspect_err(|e| self.poison(e))?;
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
