//! Async FlashKV client: leader discovery, safe retries, definite vs unknown failures (built in a later change).
