"""A named model using every toy at once: the EMA mixer (a fixed-size recurrent state, carried
across training windows), the smoothing head and the scale transform."""
from zoo.hookspecs import hookimpl


@hookimpl
def register_models(register):
    register("toys-all", {"extends": "gpt2-ema",
                          "description": "gpt2-ema with the toy head and the toy scale transform",
                          "head": {"name": "smooth_next_token", "params": {"label_smoothing": 0.05}},
                          "transforms": [{"name": "scale", "params": {"targets": ["attention", "ffn"]}}]})
