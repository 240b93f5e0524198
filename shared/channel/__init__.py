"""The fast channel: Redis pub/sub as a hint that work is waiting. The database stays the truth."""
