"""Show a plot chart node in a module's own ``qMRMLPlotWidget`` (no Qt here).

``qMRMLPlotWidget`` shows a *plot view node* (``setMRMLPlotViewNode``), which names the chart
to draw; it has no ``setMRMLPlotChartNode`` (Slicer 5.10 and later: qMRMLPlotWidget.h).
"""

from __future__ import annotations

VIEW_NAME = "RADA training loss view"


def loss_plot_view(scene, chart_node, name: str = VIEW_NAME):
    """The plot view node (made once, reused) showing ``chart_node``.

    Args:
        scene: the MRML scene.
        chart_node: the ``vtkMRMLPlotChartNode`` to show.
        name: the view node's name.

    Returns:
        The ``vtkMRMLPlotViewNode`` to give to ``qMRMLPlotWidget.setMRMLPlotViewNode``.
    """
    view = scene.GetFirstNodeByName(name)
    if view is None or not view.IsA("vtkMRMLPlotViewNode"):
        view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode", name)
    if view.GetPlotChartNodeID() != chart_node.GetID():
        view.SetPlotChartNodeID(chart_node.GetID())
    return view
