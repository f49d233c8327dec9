//! Placeholder until the BTF reader lands (replaced in the next commit).
