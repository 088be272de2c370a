"""`python -m feedbackgen.cli`, which is how torchrun starts it (`torchrun -m feedbackgen.cli train ...`)."""

from feedbackgen.cli import main

main()
