//! Tests of the receiver (filled in the next commit).
