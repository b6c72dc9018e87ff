//! Length-prefixed protobuf framing over TCP and peer links (built in a later change).
