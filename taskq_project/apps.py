from django.contrib.admin.apps import AdminConfig


class TaskqAdminConfig(AdminConfig):
    default_site = "taskq_project.admin_site.TaskqAdminSite"
