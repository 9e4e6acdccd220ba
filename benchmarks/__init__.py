"""Scripts behind flexunet's published figures; each writes JSON (+ markdown) under benchmarks/results/."""
