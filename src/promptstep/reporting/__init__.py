"""Paper tables, Figure 2, markdown / CSV / PNG rendering; read-only over run directories."""
