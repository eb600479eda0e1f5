"""A method with nothing to act on runs the plain model (and costs what it costs), never an identity Plan."""

from attnlab.interventions.act import ACTMethod, act_plan
from attnlab.interventions.var import SinkSets, VARMethod, var_plan


def test_var_without_sink_dimensions_is_the_plain_model():
    assert VARMethod(var_plan(8), sink_dims=()).steering_for(None, "Is there a cat?") == {}
    steer = VARMethod(var_plan(8), sink_dims=(3, 7), tau=3.5).steering_for(None, "Is there a cat?")
    plan, sinks = steer["plan"], steer["key_set_fn"]
    assert sorted(plan.layers) == [1, 2, 3, 4, 5, 6] and isinstance(sinks, SinkSets) and sinks.sink_dims == (3, 7)


def test_act_without_calibrated_heads_is_the_plain_model():
    assert ACTMethod(act_plan([], 8), heads=[], search={}).steering_for() == {}
    steer = ACTMethod(act_plan([(2, 5)], 8), heads=[(2, 5)], search={}).steering_for()
    plan, sinks = steer["plan"], steer["key_set_fn"]
    assert sorted(plan.layers) == [2] and sinks is not None
