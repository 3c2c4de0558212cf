"""Learning-rate schedule of the paper's recipe (4.2): constant, then exponential decay."""

__all__ = ['ConstantThenExponentialDecay']


class ConstantThenExponentialDecay:
    """LambdaLR factor: 1 for the first ``constant_epochs`` epochs, then ``final_factor ** t`` with t going
    linearly from 0 to 1 over the remaining epochs, so the rate reaches ``final_factor`` times the base rate
    at ``total_epochs`` (paper 4.2: "constant for 200 epochs, then decays exponentially to 0 by epoch 500").

    The trainer steps the scheduler after each epoch, so an epoch runs at the factor of the number of epochs done
    before it, the schedule's value at the epoch's start: epochs 1 to ``constant_epochs + 1`` run at the base
    rate, the decay is under way from the next one, and ``final_factor`` is the value at the end of the last
    epoch, which itself runs at ``final_factor ** ((total - constant - 1) / (total - constant))``.

    A class rather than a closure, so that ``LambdaLR.state_dict`` stores its parameters.

    Args:
        constant_epochs: Epochs at factor 1.
        total_epochs: Epoch at which the factor reaches ``final_factor``.
        final_factor: Factor at ``total_epochs``, in (0, 1].
    """

    def __init__(self, constant_epochs: int, total_epochs: int, final_factor: float):
        self.constant_epochs = constant_epochs
        self.total_epochs = total_epochs
        self.final_factor = final_factor

    def __call__(self, epoch: int) -> float:
        if epoch < self.constant_epochs or self.total_epochs <= self.constant_epochs:
            return 1.0
        progress = min((epoch - self.constant_epochs) / (self.total_epochs - self.constant_epochs), 1.0)
        return self.final_factor ** progress
