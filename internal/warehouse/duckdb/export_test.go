package duckdb

// NumberWithWindow makes p's plans number their rows with the window, the fallback for row ids
// that are not dense.
func NumberWithWindow(p *Planner) { p.numberWithWindow = true }
