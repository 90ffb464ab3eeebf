"""The operator's console: a web page beside the rig (``operator-console``, ``rig-up console=true``).

* :mod:`apps.console.node`: the ROS node (:class:`~apps.console.node.ConsoleNode`), its parameters, ``main``;
* :mod:`apps.console.web`: the Starlette app (routes, the session token) and the uvicorn server thread;
* :mod:`apps.console.state`: what the page shows (control, episode timer, session counters), pure;
* :mod:`apps.console.review`: the review queue of the reward classifier's positives and its audit, pure;
* :mod:`apps.console.frames`, :mod:`apps.console.taker`: camera views at a bounded cost;
* :mod:`apps.console.curves`: the RL learner's curves; ``static/``: the page (plain HTML/JS/CSS).

Nothing here runs at import.
"""
