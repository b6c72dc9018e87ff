//! `std::collections::BTreeMap` behind an `RwLock`: the in-memory speed of
//! light. No durability at all; `sync` and `compact` do nothing. It is shown
//! for reference and never counted as a peer.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use anyhow::Result;

use super::Engine;

type Map = BTreeMap<Box<[u8]>, Box<[u8]>>;

#[derive(Default)]
pub struct BTree {
    map: RwLock<Map>,
}

impl Engine for BTree {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(key.into(), value.into());
        Ok(())
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(v) => {
                out.clear();
                out.extend_from_slice(v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn scan_from(&self, start: &[u8], n: usize) -> Result<usize> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        for (k, v) in map
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .take(n)
        {
            std::hint::black_box((k.len(), v.len()));
            count += 1;
        }
        Ok(count)
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn compact(&mut self) -> Result<bool> {
        Ok(false)
    }
}
