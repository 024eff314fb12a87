"""``python -m segtrain``, which is also how torchrun starts each rank (``torchrun -m segtrain run ...``):
as a rank, a failure is one line naming the rank (:func:`segtrain.distributed.rank_main`)."""

from segtrain import distributed
from segtrain.cli import app, main

if __name__ == "__main__":
    if distributed.launched():
        distributed.rank_main(app)
    else:
        main()
