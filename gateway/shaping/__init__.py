from gateway.shaping.plan import DeviceTree, HtbClass, TcOp, client_class, diff_classes, plan_trees

__all__ = ["DeviceTree", "HtbClass", "TcOp", "client_class", "diff_classes", "plan_trees"]
