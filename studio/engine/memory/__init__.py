"""Memory: what a run or an edit will need (plan), what the machine has, and the verdict."""
