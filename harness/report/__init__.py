"""Reading results back: comparisons and statistics, tables, rendering, plots, model cards, the gate."""
