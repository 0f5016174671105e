"""The embedded default network: a local Solana-compatible validator (LiteSVM + a JSON-RPC subset +
accounts persisted to SQLite after every transaction)."""
