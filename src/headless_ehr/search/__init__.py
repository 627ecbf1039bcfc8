"""Search: parameter registry, index extraction on write, query compilation."""
