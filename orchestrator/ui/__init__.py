"""`rtgrid ui`: a read-only web dashboard over the results database (Dash; its JavaScript ships in the package)."""
